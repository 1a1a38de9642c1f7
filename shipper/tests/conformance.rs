//! One set of checks of the [`Target`] contract (see `shipper/src/targets/mod.rs`), run
//! against every backend as the shipper opens it, through `target_from_url`: `file://`
//! on a temp dir, `peer://` on a receiver bound to 127.0.0.1 port 0, and `s3://` on a
//! real single-node Garage (skipped, loudly, when Garage is not installed, unless
//! `SNAPBLK_REQUIRE_GARAGE=1`; see common/garage.rs).
//!
//! Each check gets a fresh, empty target, so a failure names one rule of one backend.

mod common;

use common::garage::{Garage, BUCKET};
use fixtures::block_pattern;
use shipper::targets::publish;
use shipper::{target_from_url, Credentials, Receiver, Retry, Target, TargetErrorKind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What a backend guarantees where the contract leaves room.
struct Backend {
    /// Scheme, for messages.
    name: &'static str,
    /// `put_new` itself refuses a taken key (not true of Garage, which ignores
    /// `If-None-Match`: S3.md).
    refuses_overwrite: bool,
    /// Keys outside `validate_key` are refused (`file://` and `peer://`; S3 takes any key).
    validates_keys: bool,
    /// A directory that must stay untouched by keys trying to escape the target, if any.
    outside: Option<PathBuf>,
    /// A new, empty target for the check named by the argument.
    fresh: Fresh,
}

type Check = fn(&dyn Target, &Backend);

/// Makes a new, empty target for the check it is named after.
type Fresh = Box<dyn FnMut(&str) -> Box<dyn Target>>;

/// The checks, by the rule each proves.
const CHECKS: &[(&str, Check)] = &[
    (
        "put_then_get_returns_the_same_bytes",
        put_then_get_returns_the_same_bytes,
    ),
    (
        "a_taken_key_is_never_overwritten",
        a_taken_key_is_never_overwritten,
    ),
    (
        "publish_never_overwrites_on_any_backend",
        publish_never_overwrites_on_any_backend,
    ),
    (
        "a_missing_object_is_not_found_by_get_and_none_by_head",
        a_missing_object_is_not_found_by_get_and_none_by_head,
    ),
    (
        "get_refuses_objects_larger_than_its_limit",
        get_refuses_objects_larger_than_its_limit,
    ),
    (
        "list_returns_the_keys_under_a_prefix_sorted",
        list_returns_the_keys_under_a_prefix_sorted,
    ),
    (
        "delete_is_idempotent_and_frees_the_key",
        delete_is_idempotent_and_frees_the_key,
    ),
    (
        "id_is_stable_and_names_the_scheme",
        id_is_stable_and_names_the_scheme,
    ),
    (
        "keys_that_could_escape_the_target_are_refused",
        keys_that_could_escape_the_target_are_refused,
    ),
];

fn run(mut b: Backend) {
    for (name, check) in CHECKS {
        eprintln!("conformance {}: {name}", b.name);
        let t = (b.fresh)(name);
        check(t.as_ref(), &b);
    }
}

/// Fails fast: the checks expect answers, not outages.
fn quick() -> Retry {
    Retry::none()
}

fn put_then_get_returns_the_same_bytes(t: &dyn Target, _: &Backend) {
    let data = block_pattern(1, 0, 70_000);
    t.put_new("segments/0000000000000001/a", &data).unwrap();
    assert_eq!(t.get("segments/0000000000000001/a", 1 << 20).unwrap(), data);
    assert_eq!(t.head("segments/0000000000000001/a").unwrap(), Some(70_000));
    t.put_new("manifests/empty", b"").unwrap();
    assert_eq!(t.get("manifests/empty", 10).unwrap(), Vec::<u8>::new());
    assert_eq!(t.get("manifests/empty", 0).unwrap(), Vec::<u8>::new());
    assert_eq!(t.head("manifests/empty").unwrap(), Some(0));
}

fn a_taken_key_is_never_overwritten(t: &dyn Target, b: &Backend) {
    t.put_new("manifests/a", b"one").unwrap();
    let second = t.put_new("manifests/a", b"two");
    if b.refuses_overwrite {
        let e = second.unwrap_err();
        assert_eq!(e.kind, TargetErrorKind::AlreadyExists, "{e}");
        assert_eq!(t.get("manifests/a", 10).unwrap(), b"one");
    } else {
        // The server decides; either way a whole object is stored, never a mix.
        let now = t.get("manifests/a", 10).unwrap();
        assert!(now == b"one" || now == b"two", "{now:?}");
    }
}

fn publish_never_overwrites_on_any_backend(t: &dyn Target, _: &Backend) {
    assert!(
        !publish(t, "manifests/p", b"mine", false).unwrap(),
        "uploaded"
    );
    assert!(
        publish(t, "manifests/p", b"mine", false).unwrap(),
        "found, not re-sent"
    );
    let e = publish(t, "manifests/p", b"else", false).unwrap_err();
    assert_eq!(e.kind, TargetErrorKind::AlreadyExists, "{e}");
    assert_eq!(t.get("manifests/p", 10).unwrap(), b"mine");
}

fn a_missing_object_is_not_found_by_get_and_none_by_head(t: &dyn Target, _: &Backend) {
    let e = t.get("manifests/missing", 10).unwrap_err();
    assert_eq!(e.kind, TargetErrorKind::NotFound, "{e}");
    assert_eq!(t.head("manifests/missing").unwrap(), None);
    assert_eq!(t.head("segments/0000000000000009/none").unwrap(), None);
}

fn get_refuses_objects_larger_than_its_limit(t: &dyn Target, _: &Backend) {
    let data = block_pattern(2, 0, 300_000);
    t.put_new("segments/0000000000000001/big", &data).unwrap();
    assert_eq!(
        t.get("segments/0000000000000001/big", 300_000).unwrap(),
        data
    );
    let e = t.get("segments/0000000000000001/big", 299_999).unwrap_err();
    assert_eq!(e.kind, TargetErrorKind::Permanent, "{e}");
    assert!(e.detail.contains("more than the 299999"), "{e}");
    t.put_new("manifests/one", b"x").unwrap();
    assert_eq!(
        t.get("manifests/one", 0).unwrap_err().kind,
        TargetErrorKind::Permanent
    );
}

fn list_returns_the_keys_under_a_prefix_sorted(t: &dyn Target, _: &Backend) {
    assert!(t.list("").unwrap().is_empty(), "a fresh target is empty");
    for k in [
        "segments/0000000000000002/b",
        "manifests/0000000000000001-0",
        "segments/0000000000000001/z",
        "segments/0000000000000001/a",
    ] {
        t.put_new(k, k.as_bytes()).unwrap();
    }
    assert_eq!(
        t.list("segments/").unwrap(),
        [
            "segments/0000000000000001/a",
            "segments/0000000000000001/z",
            "segments/0000000000000002/b"
        ]
    );
    assert_eq!(
        t.list("segments/0000000000000001/").unwrap(),
        ["segments/0000000000000001/a", "segments/0000000000000001/z"]
    );
    // A plain string prefix, not only whole parts.
    assert_eq!(
        t.list("segments/000000000000000").unwrap().len(),
        3,
        "partial part"
    );
    assert_eq!(t.list("man").unwrap(), ["manifests/0000000000000001-0"]);
    assert_eq!(t.list("").unwrap().len(), 4);
    assert!(t.list("segments/0000000000000003/").unwrap().is_empty());
    assert!(t.list("nothing/").unwrap().is_empty());
}

fn delete_is_idempotent_and_frees_the_key(t: &dyn Target, _: &Backend) {
    t.put_new("segments/0000000000000001/a", b"old").unwrap();
    t.put_new("segments/0000000000000001/b", b"kept").unwrap();
    t.delete("segments/0000000000000001/a").unwrap();
    assert_eq!(t.head("segments/0000000000000001/a").unwrap(), None);
    let e = t.get("segments/0000000000000001/a", 10).unwrap_err();
    assert_eq!(e.kind, TargetErrorKind::NotFound, "{e}");
    assert_eq!(
        t.list("segments/").unwrap(),
        ["segments/0000000000000001/b"]
    );
    t.delete("segments/0000000000000001/a").unwrap();
    t.delete("manifests/never-there").unwrap();
    // A deleted key may be published again (e.g. a repaired segment).
    t.put_new("segments/0000000000000001/a", b"new").unwrap();
    assert_eq!(t.get("segments/0000000000000001/a", 10).unwrap(), b"new");
    // Deleting the last object of a directory-like prefix leaves the others readable.
    t.delete("segments/0000000000000001/b").unwrap();
    t.delete("segments/0000000000000001/a").unwrap();
    assert!(t.list("").unwrap().is_empty());
    t.put_new("segments/0000000000000001/c", b"again").unwrap();
    assert_eq!(t.list("").unwrap(), ["segments/0000000000000001/c"]);
}

fn id_is_stable_and_names_the_scheme(t: &dyn Target, b: &Backend) {
    let id = t.id();
    assert!(id.starts_with(&format!("{}://", b.name)), "{id}");
    t.put_new("manifests/a", b"x").unwrap();
    assert_eq!(t.id(), id, "requests do not change the identity");
}

fn keys_that_could_escape_the_target_are_refused(t: &dyn Target, b: &Backend) {
    if !b.validates_keys {
        return;
    }
    for k in [
        "../x",
        "/etc/passwd",
        "a//b",
        ".hidden",
        "a/../../b",
        "a b",
        "",
    ] {
        assert!(t.put_new(k, b"x").is_err(), "{k:?} accepted");
    }
    if let Some(out) = &b.outside {
        assert!(!out.join("x").exists() && !out.join("b").exists());
    }
    // The target still serves valid keys afterwards (a peer reconnects).
    t.put_new("manifests/ok", b"ok").unwrap();
    assert_eq!(t.get("manifests/ok", 10).unwrap(), b"ok");
}

fn url_of_dir(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

#[test]
fn the_file_target_keeps_the_contract() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let creds = Credentials {
        retry: quick(),
        ..Default::default()
    };
    run(Backend {
        name: "file",
        refuses_overwrite: true,
        validates_keys: true,
        outside: Some(root.clone()),
        fresh: Box::new(move |check| {
            target_from_url(&url_of_dir(&root.join(check)), &creds).unwrap()
        }),
    });
}

#[test]
fn the_peer_target_keeps_the_contract() {
    const KEY: &[u8] = b"0123456789abcdef-conformance";
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let creds = Credentials {
        peer_key: Some(KEY.to_vec()),
        retry: quick(),
        ..Default::default()
    };
    let stops = Arc::new(Mutex::new(Vec::new()));
    let stops2 = stops.clone();
    run(Backend {
        name: "peer",
        refuses_overwrite: true,
        validates_keys: true,
        outside: Some(root.clone()),
        // A receiver per check, each storing into its own directory.
        fresh: Box::new(move |check| {
            let r = Receiver::bind("127.0.0.1:0", &root.join(check), KEY.to_vec()).unwrap();
            let addr = r.local_addr().unwrap();
            stops2.lock().unwrap().push(r.stop_handle().unwrap());
            std::thread::spawn(move || r.run());
            target_from_url(&format!("peer://{addr}"), &creds).unwrap()
        }),
    });
    for s in stops.lock().unwrap().iter() {
        s.stop();
    }
}

#[test]
fn the_s3_target_keeps_the_contract_on_garage() {
    let d = tempfile::tempdir().unwrap();
    let Some(g) = Garage::start(&d.path().join("garage")) else {
        return;
    };
    let creds = Credentials {
        retry: quick(),
        ..g.creds()
    };
    run(Backend {
        name: "s3",
        // Garage ignores If-None-Match (S3.md; still so in 2.5.0): only `publish` keeps
        // objects immutable there.
        refuses_overwrite: false,
        validates_keys: false,
        outside: None,
        // One bucket, a prefix per check: prefixes isolate targets.
        fresh: Box::new(move |check| {
            target_from_url(&format!("s3://{BUCKET}/conformance/{check}"), &creds).unwrap()
        }),
    });
}
