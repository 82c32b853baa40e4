//! Schema helpers shared by the resource types: CEL rules built from Rust
//! values so that the rule and the code that interprets the field agree.

use kube::core::{Message, Rule};

use crate::program::HookType;

/// The CEL rule tying a `ProgramEntry`'s `type` to the one settings field it
/// needs: `xdp` must be set when `type: XDP`, and only then.
pub fn member_rule(hook: HookType) -> Rule {
    let member = hook.member();
    let name = hook.as_str();
    Rule::new(format!("has(self.{member}) == (self.type == '{name}')")).message(Message::Message(
        format!("{member} must be set when type is {name}, and only then"),
    ))
}
