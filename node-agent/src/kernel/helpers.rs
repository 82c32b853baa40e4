//! BPF helpers by name and id, and the agent's own refusal of programs
//! that call a helper denied on this node (`--deny-helper`): before a load,
//! the instructions of every program to load are scanned for helper calls
//! (`BPF_JMP | BPF_CALL` with `src_reg` 0, the helper id in `imm`), and a
//! call to a denied helper is refused with the log a kernel lacking the
//! helper writes (`unknown func bpf_<name>#<id>`). Pure: no kernel call.
//!
//! Only the instructions of the programs themselves are scanned, as libbpf
//! holds them before load: helper calls in BPF-to-BPF subprograms (not
//! inlined) are not seen.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// The flag the denied helpers come from, for messages.
pub const DENY_FLAG: &str = "--deny-helper";

/// Opcode of a call (`BPF_JMP | BPF_CALL`).
const CALL: u8 = (libbpf_sys::BPF_JMP | libbpf_sys::BPF_CALL) as u8;

/// Every helper of the kernel's `enum bpf_func_id` (libbpf-sys's copy),
/// without the `bpf_` prefix, in id order from 1.
const HELPERS: &[(&str, u32)] = &[
    ("map_lookup_elem", libbpf_sys::BPF_FUNC_map_lookup_elem),
    ("map_update_elem", libbpf_sys::BPF_FUNC_map_update_elem),
    ("map_delete_elem", libbpf_sys::BPF_FUNC_map_delete_elem),
    ("probe_read", libbpf_sys::BPF_FUNC_probe_read),
    ("ktime_get_ns", libbpf_sys::BPF_FUNC_ktime_get_ns),
    ("trace_printk", libbpf_sys::BPF_FUNC_trace_printk),
    ("get_prandom_u32", libbpf_sys::BPF_FUNC_get_prandom_u32),
    (
        "get_smp_processor_id",
        libbpf_sys::BPF_FUNC_get_smp_processor_id,
    ),
    ("skb_store_bytes", libbpf_sys::BPF_FUNC_skb_store_bytes),
    ("l3_csum_replace", libbpf_sys::BPF_FUNC_l3_csum_replace),
    ("l4_csum_replace", libbpf_sys::BPF_FUNC_l4_csum_replace),
    ("tail_call", libbpf_sys::BPF_FUNC_tail_call),
    ("clone_redirect", libbpf_sys::BPF_FUNC_clone_redirect),
    (
        "get_current_pid_tgid",
        libbpf_sys::BPF_FUNC_get_current_pid_tgid,
    ),
    (
        "get_current_uid_gid",
        libbpf_sys::BPF_FUNC_get_current_uid_gid,
    ),
    ("get_current_comm", libbpf_sys::BPF_FUNC_get_current_comm),
    (
        "get_cgroup_classid",
        libbpf_sys::BPF_FUNC_get_cgroup_classid,
    ),
    ("skb_vlan_push", libbpf_sys::BPF_FUNC_skb_vlan_push),
    ("skb_vlan_pop", libbpf_sys::BPF_FUNC_skb_vlan_pop),
    (
        "skb_get_tunnel_key",
        libbpf_sys::BPF_FUNC_skb_get_tunnel_key,
    ),
    (
        "skb_set_tunnel_key",
        libbpf_sys::BPF_FUNC_skb_set_tunnel_key,
    ),
    ("perf_event_read", libbpf_sys::BPF_FUNC_perf_event_read),
    ("redirect", libbpf_sys::BPF_FUNC_redirect),
    ("get_route_realm", libbpf_sys::BPF_FUNC_get_route_realm),
    ("perf_event_output", libbpf_sys::BPF_FUNC_perf_event_output),
    ("skb_load_bytes", libbpf_sys::BPF_FUNC_skb_load_bytes),
    ("get_stackid", libbpf_sys::BPF_FUNC_get_stackid),
    ("csum_diff", libbpf_sys::BPF_FUNC_csum_diff),
    (
        "skb_get_tunnel_opt",
        libbpf_sys::BPF_FUNC_skb_get_tunnel_opt,
    ),
    (
        "skb_set_tunnel_opt",
        libbpf_sys::BPF_FUNC_skb_set_tunnel_opt,
    ),
    ("skb_change_proto", libbpf_sys::BPF_FUNC_skb_change_proto),
    ("skb_change_type", libbpf_sys::BPF_FUNC_skb_change_type),
    ("skb_under_cgroup", libbpf_sys::BPF_FUNC_skb_under_cgroup),
    ("get_hash_recalc", libbpf_sys::BPF_FUNC_get_hash_recalc),
    ("get_current_task", libbpf_sys::BPF_FUNC_get_current_task),
    ("probe_write_user", libbpf_sys::BPF_FUNC_probe_write_user),
    (
        "current_task_under_cgroup",
        libbpf_sys::BPF_FUNC_current_task_under_cgroup,
    ),
    ("skb_change_tail", libbpf_sys::BPF_FUNC_skb_change_tail),
    ("skb_pull_data", libbpf_sys::BPF_FUNC_skb_pull_data),
    ("csum_update", libbpf_sys::BPF_FUNC_csum_update),
    ("set_hash_invalid", libbpf_sys::BPF_FUNC_set_hash_invalid),
    ("get_numa_node_id", libbpf_sys::BPF_FUNC_get_numa_node_id),
    ("skb_change_head", libbpf_sys::BPF_FUNC_skb_change_head),
    ("xdp_adjust_head", libbpf_sys::BPF_FUNC_xdp_adjust_head),
    ("probe_read_str", libbpf_sys::BPF_FUNC_probe_read_str),
    ("get_socket_cookie", libbpf_sys::BPF_FUNC_get_socket_cookie),
    ("get_socket_uid", libbpf_sys::BPF_FUNC_get_socket_uid),
    ("set_hash", libbpf_sys::BPF_FUNC_set_hash),
    ("setsockopt", libbpf_sys::BPF_FUNC_setsockopt),
    ("skb_adjust_room", libbpf_sys::BPF_FUNC_skb_adjust_room),
    ("redirect_map", libbpf_sys::BPF_FUNC_redirect_map),
    ("sk_redirect_map", libbpf_sys::BPF_FUNC_sk_redirect_map),
    ("sock_map_update", libbpf_sys::BPF_FUNC_sock_map_update),
    ("xdp_adjust_meta", libbpf_sys::BPF_FUNC_xdp_adjust_meta),
    (
        "perf_event_read_value",
        libbpf_sys::BPF_FUNC_perf_event_read_value,
    ),
    (
        "perf_prog_read_value",
        libbpf_sys::BPF_FUNC_perf_prog_read_value,
    ),
    ("getsockopt", libbpf_sys::BPF_FUNC_getsockopt),
    ("override_return", libbpf_sys::BPF_FUNC_override_return),
    (
        "sock_ops_cb_flags_set",
        libbpf_sys::BPF_FUNC_sock_ops_cb_flags_set,
    ),
    ("msg_redirect_map", libbpf_sys::BPF_FUNC_msg_redirect_map),
    ("msg_apply_bytes", libbpf_sys::BPF_FUNC_msg_apply_bytes),
    ("msg_cork_bytes", libbpf_sys::BPF_FUNC_msg_cork_bytes),
    ("msg_pull_data", libbpf_sys::BPF_FUNC_msg_pull_data),
    ("bind", libbpf_sys::BPF_FUNC_bind),
    ("xdp_adjust_tail", libbpf_sys::BPF_FUNC_xdp_adjust_tail),
    (
        "skb_get_xfrm_state",
        libbpf_sys::BPF_FUNC_skb_get_xfrm_state,
    ),
    ("get_stack", libbpf_sys::BPF_FUNC_get_stack),
    (
        "skb_load_bytes_relative",
        libbpf_sys::BPF_FUNC_skb_load_bytes_relative,
    ),
    ("fib_lookup", libbpf_sys::BPF_FUNC_fib_lookup),
    ("sock_hash_update", libbpf_sys::BPF_FUNC_sock_hash_update),
    ("msg_redirect_hash", libbpf_sys::BPF_FUNC_msg_redirect_hash),
    ("sk_redirect_hash", libbpf_sys::BPF_FUNC_sk_redirect_hash),
    ("lwt_push_encap", libbpf_sys::BPF_FUNC_lwt_push_encap),
    (
        "lwt_seg6_store_bytes",
        libbpf_sys::BPF_FUNC_lwt_seg6_store_bytes,
    ),
    (
        "lwt_seg6_adjust_srh",
        libbpf_sys::BPF_FUNC_lwt_seg6_adjust_srh,
    ),
    ("lwt_seg6_action", libbpf_sys::BPF_FUNC_lwt_seg6_action),
    ("rc_repeat", libbpf_sys::BPF_FUNC_rc_repeat),
    ("rc_keydown", libbpf_sys::BPF_FUNC_rc_keydown),
    ("skb_cgroup_id", libbpf_sys::BPF_FUNC_skb_cgroup_id),
    (
        "get_current_cgroup_id",
        libbpf_sys::BPF_FUNC_get_current_cgroup_id,
    ),
    ("get_local_storage", libbpf_sys::BPF_FUNC_get_local_storage),
    (
        "sk_select_reuseport",
        libbpf_sys::BPF_FUNC_sk_select_reuseport,
    ),
    (
        "skb_ancestor_cgroup_id",
        libbpf_sys::BPF_FUNC_skb_ancestor_cgroup_id,
    ),
    ("sk_lookup_tcp", libbpf_sys::BPF_FUNC_sk_lookup_tcp),
    ("sk_lookup_udp", libbpf_sys::BPF_FUNC_sk_lookup_udp),
    ("sk_release", libbpf_sys::BPF_FUNC_sk_release),
    ("map_push_elem", libbpf_sys::BPF_FUNC_map_push_elem),
    ("map_pop_elem", libbpf_sys::BPF_FUNC_map_pop_elem),
    ("map_peek_elem", libbpf_sys::BPF_FUNC_map_peek_elem),
    ("msg_push_data", libbpf_sys::BPF_FUNC_msg_push_data),
    ("msg_pop_data", libbpf_sys::BPF_FUNC_msg_pop_data),
    ("rc_pointer_rel", libbpf_sys::BPF_FUNC_rc_pointer_rel),
    ("spin_lock", libbpf_sys::BPF_FUNC_spin_lock),
    ("spin_unlock", libbpf_sys::BPF_FUNC_spin_unlock),
    ("sk_fullsock", libbpf_sys::BPF_FUNC_sk_fullsock),
    ("tcp_sock", libbpf_sys::BPF_FUNC_tcp_sock),
    ("skb_ecn_set_ce", libbpf_sys::BPF_FUNC_skb_ecn_set_ce),
    ("get_listener_sock", libbpf_sys::BPF_FUNC_get_listener_sock),
    ("skc_lookup_tcp", libbpf_sys::BPF_FUNC_skc_lookup_tcp),
    (
        "tcp_check_syncookie",
        libbpf_sys::BPF_FUNC_tcp_check_syncookie,
    ),
    ("sysctl_get_name", libbpf_sys::BPF_FUNC_sysctl_get_name),
    (
        "sysctl_get_current_value",
        libbpf_sys::BPF_FUNC_sysctl_get_current_value,
    ),
    (
        "sysctl_get_new_value",
        libbpf_sys::BPF_FUNC_sysctl_get_new_value,
    ),
    (
        "sysctl_set_new_value",
        libbpf_sys::BPF_FUNC_sysctl_set_new_value,
    ),
    ("strtol", libbpf_sys::BPF_FUNC_strtol),
    ("strtoul", libbpf_sys::BPF_FUNC_strtoul),
    ("sk_storage_get", libbpf_sys::BPF_FUNC_sk_storage_get),
    ("sk_storage_delete", libbpf_sys::BPF_FUNC_sk_storage_delete),
    ("send_signal", libbpf_sys::BPF_FUNC_send_signal),
    ("tcp_gen_syncookie", libbpf_sys::BPF_FUNC_tcp_gen_syncookie),
    ("skb_output", libbpf_sys::BPF_FUNC_skb_output),
    ("probe_read_user", libbpf_sys::BPF_FUNC_probe_read_user),
    ("probe_read_kernel", libbpf_sys::BPF_FUNC_probe_read_kernel),
    (
        "probe_read_user_str",
        libbpf_sys::BPF_FUNC_probe_read_user_str,
    ),
    (
        "probe_read_kernel_str",
        libbpf_sys::BPF_FUNC_probe_read_kernel_str,
    ),
    ("tcp_send_ack", libbpf_sys::BPF_FUNC_tcp_send_ack),
    (
        "send_signal_thread",
        libbpf_sys::BPF_FUNC_send_signal_thread,
    ),
    ("jiffies64", libbpf_sys::BPF_FUNC_jiffies64),
    (
        "read_branch_records",
        libbpf_sys::BPF_FUNC_read_branch_records,
    ),
    (
        "get_ns_current_pid_tgid",
        libbpf_sys::BPF_FUNC_get_ns_current_pid_tgid,
    ),
    ("xdp_output", libbpf_sys::BPF_FUNC_xdp_output),
    ("get_netns_cookie", libbpf_sys::BPF_FUNC_get_netns_cookie),
    (
        "get_current_ancestor_cgroup_id",
        libbpf_sys::BPF_FUNC_get_current_ancestor_cgroup_id,
    ),
    ("sk_assign", libbpf_sys::BPF_FUNC_sk_assign),
    ("ktime_get_boot_ns", libbpf_sys::BPF_FUNC_ktime_get_boot_ns),
    ("seq_printf", libbpf_sys::BPF_FUNC_seq_printf),
    ("seq_write", libbpf_sys::BPF_FUNC_seq_write),
    ("sk_cgroup_id", libbpf_sys::BPF_FUNC_sk_cgroup_id),
    (
        "sk_ancestor_cgroup_id",
        libbpf_sys::BPF_FUNC_sk_ancestor_cgroup_id,
    ),
    ("ringbuf_output", libbpf_sys::BPF_FUNC_ringbuf_output),
    ("ringbuf_reserve", libbpf_sys::BPF_FUNC_ringbuf_reserve),
    ("ringbuf_submit", libbpf_sys::BPF_FUNC_ringbuf_submit),
    ("ringbuf_discard", libbpf_sys::BPF_FUNC_ringbuf_discard),
    ("ringbuf_query", libbpf_sys::BPF_FUNC_ringbuf_query),
    ("csum_level", libbpf_sys::BPF_FUNC_csum_level),
    ("skc_to_tcp6_sock", libbpf_sys::BPF_FUNC_skc_to_tcp6_sock),
    ("skc_to_tcp_sock", libbpf_sys::BPF_FUNC_skc_to_tcp_sock),
    (
        "skc_to_tcp_timewait_sock",
        libbpf_sys::BPF_FUNC_skc_to_tcp_timewait_sock,
    ),
    (
        "skc_to_tcp_request_sock",
        libbpf_sys::BPF_FUNC_skc_to_tcp_request_sock,
    ),
    ("skc_to_udp6_sock", libbpf_sys::BPF_FUNC_skc_to_udp6_sock),
    ("get_task_stack", libbpf_sys::BPF_FUNC_get_task_stack),
    ("load_hdr_opt", libbpf_sys::BPF_FUNC_load_hdr_opt),
    ("store_hdr_opt", libbpf_sys::BPF_FUNC_store_hdr_opt),
    ("reserve_hdr_opt", libbpf_sys::BPF_FUNC_reserve_hdr_opt),
    ("inode_storage_get", libbpf_sys::BPF_FUNC_inode_storage_get),
    (
        "inode_storage_delete",
        libbpf_sys::BPF_FUNC_inode_storage_delete,
    ),
    ("d_path", libbpf_sys::BPF_FUNC_d_path),
    ("copy_from_user", libbpf_sys::BPF_FUNC_copy_from_user),
    ("snprintf_btf", libbpf_sys::BPF_FUNC_snprintf_btf),
    ("seq_printf_btf", libbpf_sys::BPF_FUNC_seq_printf_btf),
    (
        "skb_cgroup_classid",
        libbpf_sys::BPF_FUNC_skb_cgroup_classid,
    ),
    ("redirect_neigh", libbpf_sys::BPF_FUNC_redirect_neigh),
    ("per_cpu_ptr", libbpf_sys::BPF_FUNC_per_cpu_ptr),
    ("this_cpu_ptr", libbpf_sys::BPF_FUNC_this_cpu_ptr),
    ("redirect_peer", libbpf_sys::BPF_FUNC_redirect_peer),
    ("task_storage_get", libbpf_sys::BPF_FUNC_task_storage_get),
    (
        "task_storage_delete",
        libbpf_sys::BPF_FUNC_task_storage_delete,
    ),
    (
        "get_current_task_btf",
        libbpf_sys::BPF_FUNC_get_current_task_btf,
    ),
    ("bprm_opts_set", libbpf_sys::BPF_FUNC_bprm_opts_set),
    (
        "ktime_get_coarse_ns",
        libbpf_sys::BPF_FUNC_ktime_get_coarse_ns,
    ),
    ("ima_inode_hash", libbpf_sys::BPF_FUNC_ima_inode_hash),
    ("sock_from_file", libbpf_sys::BPF_FUNC_sock_from_file),
    ("check_mtu", libbpf_sys::BPF_FUNC_check_mtu),
    ("for_each_map_elem", libbpf_sys::BPF_FUNC_for_each_map_elem),
    ("snprintf", libbpf_sys::BPF_FUNC_snprintf),
    ("sys_bpf", libbpf_sys::BPF_FUNC_sys_bpf),
    (
        "btf_find_by_name_kind",
        libbpf_sys::BPF_FUNC_btf_find_by_name_kind,
    ),
    ("sys_close", libbpf_sys::BPF_FUNC_sys_close),
    ("timer_init", libbpf_sys::BPF_FUNC_timer_init),
    (
        "timer_set_callback",
        libbpf_sys::BPF_FUNC_timer_set_callback,
    ),
    ("timer_start", libbpf_sys::BPF_FUNC_timer_start),
    ("timer_cancel", libbpf_sys::BPF_FUNC_timer_cancel),
    ("get_func_ip", libbpf_sys::BPF_FUNC_get_func_ip),
    ("get_attach_cookie", libbpf_sys::BPF_FUNC_get_attach_cookie),
    ("task_pt_regs", libbpf_sys::BPF_FUNC_task_pt_regs),
    (
        "get_branch_snapshot",
        libbpf_sys::BPF_FUNC_get_branch_snapshot,
    ),
    ("trace_vprintk", libbpf_sys::BPF_FUNC_trace_vprintk),
    ("skc_to_unix_sock", libbpf_sys::BPF_FUNC_skc_to_unix_sock),
    (
        "kallsyms_lookup_name",
        libbpf_sys::BPF_FUNC_kallsyms_lookup_name,
    ),
    ("find_vma", libbpf_sys::BPF_FUNC_find_vma),
    ("loop", libbpf_sys::BPF_FUNC_loop),
    ("strncmp", libbpf_sys::BPF_FUNC_strncmp),
    ("get_func_arg", libbpf_sys::BPF_FUNC_get_func_arg),
    ("get_func_ret", libbpf_sys::BPF_FUNC_get_func_ret),
    ("get_func_arg_cnt", libbpf_sys::BPF_FUNC_get_func_arg_cnt),
    ("get_retval", libbpf_sys::BPF_FUNC_get_retval),
    ("set_retval", libbpf_sys::BPF_FUNC_set_retval),
    ("xdp_get_buff_len", libbpf_sys::BPF_FUNC_xdp_get_buff_len),
    ("xdp_load_bytes", libbpf_sys::BPF_FUNC_xdp_load_bytes),
    ("xdp_store_bytes", libbpf_sys::BPF_FUNC_xdp_store_bytes),
    (
        "copy_from_user_task",
        libbpf_sys::BPF_FUNC_copy_from_user_task,
    ),
    ("skb_set_tstamp", libbpf_sys::BPF_FUNC_skb_set_tstamp),
    ("ima_file_hash", libbpf_sys::BPF_FUNC_ima_file_hash),
    ("kptr_xchg", libbpf_sys::BPF_FUNC_kptr_xchg),
    (
        "map_lookup_percpu_elem",
        libbpf_sys::BPF_FUNC_map_lookup_percpu_elem,
    ),
    ("skc_to_mptcp_sock", libbpf_sys::BPF_FUNC_skc_to_mptcp_sock),
    ("dynptr_from_mem", libbpf_sys::BPF_FUNC_dynptr_from_mem),
    (
        "ringbuf_reserve_dynptr",
        libbpf_sys::BPF_FUNC_ringbuf_reserve_dynptr,
    ),
    (
        "ringbuf_submit_dynptr",
        libbpf_sys::BPF_FUNC_ringbuf_submit_dynptr,
    ),
    (
        "ringbuf_discard_dynptr",
        libbpf_sys::BPF_FUNC_ringbuf_discard_dynptr,
    ),
    ("dynptr_read", libbpf_sys::BPF_FUNC_dynptr_read),
    ("dynptr_write", libbpf_sys::BPF_FUNC_dynptr_write),
    ("dynptr_data", libbpf_sys::BPF_FUNC_dynptr_data),
    (
        "tcp_raw_gen_syncookie_ipv4",
        libbpf_sys::BPF_FUNC_tcp_raw_gen_syncookie_ipv4,
    ),
    (
        "tcp_raw_gen_syncookie_ipv6",
        libbpf_sys::BPF_FUNC_tcp_raw_gen_syncookie_ipv6,
    ),
    (
        "tcp_raw_check_syncookie_ipv4",
        libbpf_sys::BPF_FUNC_tcp_raw_check_syncookie_ipv4,
    ),
    (
        "tcp_raw_check_syncookie_ipv6",
        libbpf_sys::BPF_FUNC_tcp_raw_check_syncookie_ipv6,
    ),
    ("ktime_get_tai_ns", libbpf_sys::BPF_FUNC_ktime_get_tai_ns),
    (
        "user_ringbuf_drain",
        libbpf_sys::BPF_FUNC_user_ringbuf_drain,
    ),
    ("cgrp_storage_get", libbpf_sys::BPF_FUNC_cgrp_storage_get),
    (
        "cgrp_storage_delete",
        libbpf_sys::BPF_FUNC_cgrp_storage_delete,
    ),
];

/// The name of helper `id` (with the `bpf_` prefix), if it is one.
pub fn helper_name(id: u32) -> Option<String> {
    HELPERS
        .iter()
        .find(|(_, i)| *i == id)
        .map(|(n, _)| format!("bpf_{n}"))
}

/// The id of a helper given as `--deny-helper` takes it: a name with or
/// without the `bpf_` prefix (`bpf_ringbuf_output`, `ringbuf_output`) or a
/// decimal id (`130`).
pub fn parse_helper(arg: &str) -> Result<u32> {
    let s = arg.trim();
    let id = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u32>()
            .ok()
            .filter(|id| HELPERS.iter().any(|(_, i)| i == id))
    } else {
        let name = s.strip_prefix("bpf_").unwrap_or(s);
        HELPERS.iter().find(|(n, _)| *n == name).map(|(_, i)| *i)
    };
    id.ok_or_else(|| {
        Error::Invalid(format!(
            "{DENY_FLAG} {arg:?}: not a BPF helper this agent knows (give a name such as \
             bpf_ringbuf_output or ringbuf_output, or a decimal id from 1 to {})",
            HELPERS.len()
        ))
    })
}

/// The first call to a denied helper in `insns`: (instruction index, helper id).
pub fn first_denied_call(
    insns: &[libbpf_sys::bpf_insn],
    denied: &BTreeSet<u32>,
) -> Option<(usize, u32)> {
    if denied.is_empty() {
        return None;
    }
    insns.iter().enumerate().find_map(|(i, insn)| {
        let id = u32::try_from(insn.imm).ok()?;
        (insn.code == CALL && insn.src_reg() == 0 && denied.contains(&id)).then_some((i, id))
    })
}

/// The verifier-like log of a refused call: what a kernel without the
/// helper writes, and why this node refused it.
pub fn denied_log(index: usize, id: u32) -> String {
    let name = helper_name(id).unwrap_or_else(|| "unknown".into());
    format!(
        "{index}: (85) call {name}#{id}\nunknown func {name}#{id} (refused on this node: {DENY_FLAG})"
    )
}

/// Refuses the program `program` when `insns` call a denied helper, with
/// the verifier error a kernel lacking the helper would give.
pub fn check_denied(
    program: &str,
    insns: &[libbpf_sys::bpf_insn],
    denied: &BTreeSet<u32>,
) -> Result<()> {
    match first_denied_call(insns, denied) {
        None => Ok(()),
        Some((index, id)) => Err(Error::Verifier {
            program: program.to_string(),
            log: denied_log(index, id),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_every_helper_in_id_order() {
        for (k, (_, id)) in HELPERS.iter().enumerate() {
            assert_eq!(*id as usize, k + 1);
        }
        assert_eq!(HELPERS.len() + 1, libbpf_sys::__BPF_FUNC_MAX_ID as usize);
    }

    #[test]
    fn helpers_parse_by_name_with_or_without_prefix_and_by_id() {
        assert_eq!(parse_helper("bpf_ringbuf_output").unwrap(), 130);
        assert_eq!(parse_helper("ringbuf_output").unwrap(), 130);
        assert_eq!(parse_helper("130").unwrap(), 130);
        assert_eq!(
            parse_helper("bpf_get_current_pid_tgid").unwrap(),
            libbpf_sys::BPF_FUNC_get_current_pid_tgid
        );
        assert_eq!(parse_helper("map_lookup_elem").unwrap(), 1);
        assert_eq!(helper_name(130).as_deref(), Some("bpf_ringbuf_output"));
        for bad in [
            "bpf_no_such_helper",
            "",
            "bpf_",
            "0",
            "212",
            "99999999999",
            "-1",
        ] {
            let e = parse_helper(bad).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::Invalid(_)), "{bad:?}: {msg}");
            assert!(msg.contains("--deny-helper"), "{msg}");
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        }
    }

    fn insn(code: u8, src_reg: u8, imm: i32) -> libbpf_sys::bpf_insn {
        let mut i = libbpf_sys::bpf_insn {
            code,
            imm,
            ..Default::default()
        };
        i.set_src_reg(src_reg);
        i
    }

    #[test]
    fn only_helper_calls_to_denied_helpers_are_found() {
        let denied: BTreeSet<u32> = [130, 14].into();
        let prog = [
            insn(0xb7, 0, 130), // r0 = 130: not a call
            insn(0x85, 1, 130), // call to a subprogram
            insn(0x85, 2, 130), // kfunc call
            insn(0x85, 0, 1),   // bpf_map_lookup_elem: allowed
            insn(0x85, 0, 14),  // bpf_get_current_pid_tgid: denied
            insn(0x95, 0, 0),
        ];
        assert_eq!(first_denied_call(&prog, &denied), Some((4, 14)));
        assert_eq!(first_denied_call(&prog, &BTreeSet::new()), None);
        assert_eq!(first_denied_call(&prog[..4], &denied), None);
        assert!(check_denied("p", &prog[..4], &denied).is_ok());
        let Err(Error::Verifier { program, log }) = check_denied("p", &prog, &denied) else {
            panic!("not refused")
        };
        assert_eq!(program, "p");
        assert_eq!(
            log,
            "4: (85) call bpf_get_current_pid_tgid#14\n\
             unknown func bpf_get_current_pid_tgid#14 (refused on this node: --deny-helper)"
        );
        let e = check_denied("p", &prog, &denied).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.to_string().starts_with(
                "verifier rejected program p: 4: (85) call bpf_get_current_pid_tgid#14"
            ),
            "{e}"
        );
    }
}
