//! `kubectl bpfleet image push`: a compiled `.bpf.o` into a registry as an
//! image the agents pull, printing the digest reference and the object's
//! sha256 to paste into a TracerProgram. No container engine: the image is
//! built here (bpfman's bytecode format by default, or bpfleet's artifact)
//! and pushed over the registry API. Signing stays cosign's job
//! (`cosign sign --key cosign.key <printed reference>`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use bpfleet_oci::format::{self, Format, Labels};
use bpfleet_oci::{Credentials, Registry, RegistryOptions};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Build and push program images.
#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// Push OBJECT (a `.bpf.o`) to REPOSITORY:TAG and print the digest
    /// reference and sha256 for `spec.bytecode.image` and `spec.sha256`.
    ///
    /// Example: kubectl bpfleet image push http_tracer.bpf.o
    /// registry.example:5000/bpf/http-tracer:v1 --program
    /// http_read_exit=tracepoint --program http_write_exit=tracepoint
    Push(PushArgs),
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The compiled object.
    pub object: PathBuf,
    /// Where to push: `registry[:port]/repository:tag`.
    pub reference: String,
    /// A program the object holds and its type (`name=tracepoint`, `xdp`,
    /// `tc`, `uprobe`...), written to the `io.ebpf.programs` label the
    /// agents check `spec.programs` against; repeatable, at least one.
    #[arg(long = "program", value_name = "NAME=TYPE", required = true)]
    pub programs: Vec<String>,
    /// A map and its type (`name=hash`), for the `io.ebpf.maps` label;
    /// repeatable.
    #[arg(long = "map", value_name = "NAME=TYPE")]
    pub maps: Vec<String>,
    /// `bpfman`: bpfman's bytecode image (a tar layer, labels in the image
    /// config), which bpfman also loads; `artifact`: the object itself as
    /// the one layer (media type application/vnd.bpfleet.bpf.object.v1).
    #[arg(long, default_value = "bpfman", value_parser = ["bpfman", "artifact"])]
    pub format: String,
    /// Registry user; the password is read from BPFLEET_REGISTRY_PASSWORD
    /// or, with --password-stdin, from standard input.
    #[arg(long, env = "BPFLEET_REGISTRY_USER")]
    pub username: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// PEM bundle of CAs to trust for the registry, beside the system's.
    #[arg(long)]
    pub registry_ca: Option<PathBuf>,
    /// Push over plain HTTP (only for a registry on a trusted network).
    #[arg(long)]
    pub insecure: bool,
}

/// Runs an image command, printing the result to stdout.
pub async fn run(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Push(a) => {
            let pushed = push(&a, password(&a)?).await?;
            print!("{pushed}");
            Ok(())
        }
    }
}

fn password(a: &PushArgs) -> Result<Option<String>> {
    if a.username.is_none() {
        return Ok(None);
    }
    if a.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::InvalidSpec(format!("reading the password from stdin: {e}")))?;
        return Ok(Some(s.trim_end_matches(['\n', '\r']).to_string()));
    }
    std::env::var("BPFLEET_REGISTRY_PASSWORD")
        .map(Some)
        .map_err(|_| {
            Error::InvalidSpec(
            "--username needs a password: set BPFLEET_REGISTRY_PASSWORD or pass --password-stdin"
                .into(),
        )
        })
}

/// What a push printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// `registry/repository:tag@sha256:...`.
    pub reference: String,
    /// Hex sha256 of the object.
    pub sha256: String,
}

impl std::fmt::Display for Pushed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "pushed {}", self.reference)?;
        writeln!(f, "# for the TracerProgram:")?;
        writeln!(f, "bytecode:\n  image:\n    reference: {}", self.reference)?;
        writeln!(f, "sha256: {}", self.sha256)
    }
}

/// Builds and pushes the image of `a`.
pub async fn push(a: &PushArgs, password: Option<String>) -> Result<Pushed> {
    let object = std::fs::read(&a.object)
        .map_err(|e| Error::InvalidSpec(format!("reading {}: {e}", a.object.display())))?;
    if !object.starts_with(b"\x7fELF") {
        return Err(Error::InvalidSpec(format!(
            "{} is not an ELF object",
            a.object.display()
        )));
    }
    let (repo, tag) = split_tag(&a.reference)?;
    let labels = Labels {
        programs: Some(pairs("--program", &a.programs)?),
        maps: if a.maps.is_empty() {
            None
        } else {
            Some(pairs("--map", &a.maps)?)
        },
    };
    let fmt = if a.format == "artifact" {
        Format::Artifact
    } else {
        Format::Bpfman
    };
    let file_name = a
        .object
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("program.bpf.o");
    let built = format::build(fmt, &object, file_name, &labels).map_err(oci)?;
    let mut opts = RegistryOptions::default();
    if let Some(ca) = &a.registry_ca {
        opts.ca_pems.push(
            std::fs::read(ca)
                .map_err(|e| Error::InvalidSpec(format!("--registry-ca {}: {e}", ca.display())))?,
        );
    }
    if a.insecure {
        opts.insecure
            .push(repo.split('/').next().unwrap_or_default().to_string());
    }
    let creds = match (&a.username, password) {
        (Some(u), Some(p)) => Some(Credentials {
            username: u.clone(),
            password: p,
        }),
        _ => None,
    };
    let registry = Registry::new(&opts).map_err(oci)?;
    let digest = registry
        .push(repo, tag, &built, creds.as_ref())
        .await
        .map_err(oci)?;
    Ok(Pushed {
        reference: format!("{repo}:{tag}@{digest}"),
        sha256: hex::encode(Sha256::digest(&object)),
    })
}

/// `registry/repo:tag` into its repository and tag; a tag is required (a
/// digest cannot be pushed to, it is the result).
fn split_tag(reference: &str) -> Result<(&str, &str)> {
    let bad = |why: &str| {
        Error::InvalidSpec(format!(
            "{reference:?}: {why}; write registry[:port]/repository:tag"
        ))
    };
    if reference.contains('@') {
        return Err(bad("a digest is what the push prints, not what it takes"));
    }
    let slash = reference.rfind('/').ok_or_else(|| bad("no registry"))?;
    let colon = reference[slash..]
        .rfind(':')
        .map(|i| slash + i)
        .ok_or_else(|| bad("no tag"))?;
    let (repo, tag) = (&reference[..colon], &reference[colon + 1..]);
    if tag.is_empty() || repo.is_empty() {
        return Err(bad("empty repository or tag"));
    }
    Ok((repo, tag))
}

/// `NAME=TYPE` pairs of `flag`, refused naming the one at fault.
fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for it in items {
        let (k, v) = it
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            .ok_or_else(|| {
                Error::InvalidSpec(format!(
                    "{flag} {it:?}: write NAME=TYPE, e.g. count=tracepoint"
                ))
            })?;
        if out.insert(k.to_string(), v.to_lowercase()).is_some() {
            return Err(Error::InvalidSpec(format!("{flag} {k:?} is given twice")));
        }
    }
    Ok(out)
}

fn oci(e: bpfleet_oci::Error) -> Error {
    Error::InvalidSpec(e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn references_need_a_registry_and_a_tag_and_no_digest() {
        assert_eq!(
            split_tag("127.0.0.1:5000/bpf/http:v1").unwrap(),
            ("127.0.0.1:5000/bpf/http", "v1")
        );
        for bad in [
            "http:v1",
            "r.example/bpf/http",
            "r.example/x@sha256:00",
            "r.example/x:",
        ] {
            assert!(split_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs_are_name_equals_type_once_each() {
        let p = pairs("--program", &["a=XDP".into(), "b=tracepoint".into()]).unwrap();
        assert_eq!(p.get("a").map(String::as_str), Some("xdp"));
        let e = pairs("--program", &["a".into()]).unwrap_err().to_string();
        assert!(e.contains("--program \"a\""), "{e}");
        assert!(pairs("--map", &["m=hash".into(), "m=array".into()]).is_err());
    }
}
