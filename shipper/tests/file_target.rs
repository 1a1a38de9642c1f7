//! The file:// target end to end, plus the invariants that do not depend on the backend:
//! resume without duplication, tamper detection, crash between commit and state save,
//! retention, skip-unchanged, the scheduler.

mod common;

use common::*;
use shipper::{
    remote_list, remote_prune, remote_restore, remote_verify, ship_once, FileTarget, PointSel,
    PointSource, Retry, Retrying, Scheduler, ShipOptions, Target,
};
use std::sync::Arc;
use std::time::Duration;

fn file_target(dir: &std::path::Path) -> Retrying<FileTarget> {
    Retrying::new(FileTarget::new(dir.join("remote")).unwrap(), Retry::none())
}

#[test]
fn file_ship_change_ship_restore_every_point() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    ship_change_restore_all(&t, d.path());
    let list = remote_list(&t).unwrap();
    assert_eq!(
        list.iter().map(|p| p.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(list[0].full && !list[1].full);
}

#[test]
fn interrupted_ship_commits_nothing_and_resumes_without_duplicating() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let src = volume(16);
    let mut opts = ShipOptions::new(d.path().join("state.json"));
    opts.segment_bytes = 256 << 10; // many small segments
    opts.zstd_level = None;
    // Fail the 10th read (after a few segments were published).
    src.set_read_hook(Some(Box::new(|n| {
        if n == 10 {
            Err("injected read failure".into())
        } else {
            Ok(())
        }
    })));
    let e = ship_once(&src, &t, &opts).unwrap_err().to_string();
    assert!(
        e.contains("injected read failure") && e.contains("read point"),
        "{e}"
    );
    assert!(
        remote_list(&t).unwrap().is_empty(),
        "no manifest: nothing committed"
    );
    let partial = t.list("segments/").unwrap().len();
    assert!(
        partial >= 3,
        "some segments were published before the failure: {partial}"
    );
    assert_eq!(
        src.point_names().len(),
        1,
        "the frozen point is kept for the resume"
    );
    // Data written after the failure must not leak into the resumed point.
    let frozen = sha_hex(&src.point_image(&src.point_names()[0]).unwrap());
    src.write(0, &block_pattern(77, 0, 8192));
    src.set_read_hook(None);
    let info = ship_once(&src, &t, &opts).unwrap();
    assert!(info.resumed && info.committed && info.seq == 1, "{info:?}");
    assert_eq!(
        info.segments_reused as usize, partial,
        "already-published segments not re-sent"
    );
    assert_eq!(
        t.list("segments/").unwrap().len(),
        info.segments as usize,
        "no duplicate objects"
    );
    let out = d.path().join("r.img");
    remote_restore(&t, PointSel::Latest, &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), frozen);
}

#[test]
fn crash_after_commit_before_state_save_is_reconciled() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let src = volume(4);
    let opts = ShipOptions::new(d.path().join("state.json"));
    ship(&src, &t, &opts);
    let before = std::fs::read(&opts.state_path).unwrap();
    mutate(&src, 1);
    let (p2, _) = ship(&src, &t, &opts);
    // Simulate the crash: the manifest of point 2 is published, the state still says 1
    // with point 2 in progress.
    let mut st: serde_json::Value = serde_json::from_slice(&before).unwrap();
    st["in_progress"] =
        serde_json::json!({"seq": 2, "name": p2.point_name, "created_unix": p2.created_unix});
    std::fs::write(&opts.state_path, serde_json::to_vec(&st).unwrap()).unwrap();
    mutate(&src, 2);
    let (p3, sha3) = ship(&src, &t, &opts);
    assert_eq!(p3.seq, 3);
    assert!(!p3.full, "incremental from the promoted point 2");
    assert_eq!(
        src.point_names(),
        vec![p3.point_name.clone()],
        "stale local points dropped"
    );
    let out = d.path().join("r3.img");
    remote_restore(&t, PointSel::Seq(3), &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), sha3);
}

#[test]
fn lost_local_point_reships_a_full_base_that_continues_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let src = volume(4);
    let opts = ShipOptions::new(d.path().join("state.json"));
    let (p1, _) = ship(&src, &t, &opts);
    src.delete_point(&p1.point_name).unwrap();
    mutate(&src, 1);
    let (p2, sha2) = ship(&src, &t, &opts);
    assert!(p2.full && p2.seq == 2);
    let out = d.path().join("r.img");
    remote_restore(&t, PointSel::Seq(2), &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), sha2);
    assert!(remote_verify(&t).unwrap().ok());
}

#[test]
fn tampered_segment_is_caught_by_verify_and_refused_by_restore() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let src = volume(4);
    let opts = ShipOptions::new(d.path().join("state.json"));
    ship(&src, &t, &opts);
    mutate(&src, 1);
    ship(&src, &t, &opts);
    // Flip one byte in the middle of point 1's first segment.
    let key = t.list("segments/0000000000000001/").unwrap()[0].clone();
    let path = d.path().join("remote").join(&key);
    let mut b = std::fs::read(&path).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&path, b).unwrap();
    let v = remote_verify(&t).unwrap();
    assert!(!v.ok());
    for p in &v.points {
        let why = p.problem.as_deref().unwrap_or("");
        assert!(
            why.contains(&key) && why.contains("SHA-256"),
            "point {} depends on the bad segment: {why}",
            p.seq
        );
    }
    let out = d.path().join("bad.img");
    let e = remote_restore(&t, PointSel::Latest, &out, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("corrupt") && e.contains(&key), "{e}");
    assert!(
        !out.exists() && !d.path().join("bad.img.partial").exists(),
        "nothing half-written"
    );
    // A tampered manifest is caught too.
    let mkey = t.list("manifests/").unwrap()[1].clone();
    let mpath = d.path().join("remote").join(&mkey);
    let mut m = std::fs::read(&mpath).unwrap();
    m[20] ^= 1;
    std::fs::write(&mpath, m).unwrap();
    let v = remote_verify(&t).unwrap();
    assert!(v.problems.iter().any(|p| p.contains(&mkey)), "{v:?}");
}

#[test]
fn restore_refuses_to_overwrite_and_unknown_points() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let src = volume(2);
    ship(&src, &t, &ShipOptions::new(d.path().join("s.json")));
    let out = d.path().join("exists.img");
    std::fs::write(&out, b"keep me").unwrap();
    let e = remote_restore(&t, PointSel::Latest, &out, &|_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let e = remote_restore(&t, PointSel::Seq(9), &d.path().join("x.img"), &|_, _| {})
        .unwrap_err()
        .to_string();
    // What to run about it (`snapblk remote list`) is the CLI's to add (cli/src/failure.rs).
    assert!(e.contains("point 9 not found"), "{e}");
}

#[test]
fn prune_merges_old_points_into_a_base_and_keeps_the_rest_restorable() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let src = volume(4);
    let opts = ShipOptions::new(d.path().join("state.json"));
    let mut shas = Vec::new();
    for round in 0..5 {
        if round > 0 {
            mutate(&src, round);
        }
        shas.push(ship(&src, &t, &opts).1);
    }
    let r = remote_prune(&t, 2, Some(3)).unwrap();
    assert_eq!(r.kept, vec![4, 5]);
    assert_eq!(r.removed, vec![1, 2, 3]);
    assert_eq!(r.rebased, Some(4));
    let list = remote_list(&t).unwrap();
    assert!(
        list[0].full && list[0].gen == 1 && !list[1].full,
        "{list:?}"
    );
    assert!(remote_verify(&t).unwrap().ok());
    for (seq, sha) in [(4u64, &shas[3]), (5, &shas[4])] {
        let out = d.path().join(format!("p{seq}.img"));
        remote_restore(&t, PointSel::Seq(seq), &out, &|_, _| {}).unwrap();
        assert_eq!(&file_sha(&out), sha, "point {seq} after prune");
    }
    // Only live objects remain: 2 manifests + their segments.
    let segs = t.list("segments/").unwrap();
    assert!(
        segs.iter()
            .all(|k| k.starts_with("segments/0000000000000004/00000001-")
                || k.starts_with("segments/0000000000000005/")),
        "{segs:?}"
    );
    assert_eq!(t.list("manifests/").unwrap().len(), 2);
    // Shipping continues the chain after a prune.
    mutate(&src, 9);
    let (p6, sha6) = ship(&src, &t, &opts);
    assert_eq!(p6.seq, 6);
    let out = d.path().join("p6.img");
    remote_restore(&t, PointSel::Latest, &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), sha6);
    assert!(remote_prune(&t, 0, None).is_err());
}

#[test]
fn skip_unchanged_commits_nothing_when_idle() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let src = volume(2);
    let mut opts = ShipOptions::new(d.path().join("state.json"));
    opts.skip_unchanged = true;
    let a = ship_once(&src, &t, &opts).unwrap();
    let b = ship_once(&src, &t, &opts).unwrap();
    assert!(a.committed && !b.committed && b.seq == 1);
    assert_eq!(src.point_names().len(), 1);
    assert_eq!(remote_list(&t).unwrap().len(), 1);
}

#[test]
fn state_file_of_another_target_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let t1 = Retrying::new(FileTarget::new(d.path().join("a")).unwrap(), Retry::none());
    let t2 = Retrying::new(FileTarget::new(d.path().join("b")).unwrap(), Retry::none());
    let src = volume(1);
    let opts = ShipOptions::new(d.path().join("state.json"));
    ship_once(&src, &t1, &opts).unwrap();
    let e = ship_once(&src, &t2, &opts).unwrap_err().to_string();
    assert!(e.contains("one state file per target"), "{e}");
}

#[test]
fn scheduler_ships_every_interval_pauses_and_reports_lag() {
    let d = tempfile::tempdir().unwrap();
    let t: Arc<dyn Target> = Arc::new(file_target(d.path()));
    let src = Arc::new(volume(2));
    let mut opts = ShipOptions::new(d.path().join("state.json"));
    opts.skip_unchanged = true;
    let s = Scheduler::start(src.clone(), t.clone(), opts, Duration::from_millis(100));
    let wait = |pred: &dyn Fn(&shipper::SchedulerStats) -> bool| {
        for _ in 0..600 {
            if pred(&s.stats()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out: {:?}", s.stats());
    };
    wait(&|st| st.points_committed == 1);
    src.write(0, &block_pattern(5, 0, 4096));
    wait(&|st| st.points_committed == 2);
    s.pause();
    wait(&|st| !st.shipping);
    let paused_at = s.stats().points_committed + s.stats().unchanged;
    src.write(4096, &block_pattern(6, 0, 4096));
    std::thread::sleep(Duration::from_millis(400));
    let st = s.stats();
    assert_eq!(st.state, "paused");
    assert_eq!(
        st.points_committed + st.unchanged,
        paused_at,
        "no ships while paused"
    );
    s.resume();
    wait(&|st| st.points_committed == 3);
    let st = s.stop();
    assert!(
        st.lag.is_some_and(|l| l < Duration::from_secs(30)),
        "{st:?}"
    );
    assert!(st.bytes_uploaded > 0 && st.avg_throughput_bps > 0.0 && st.failures == 0);
    assert_eq!(remote_list(&t).unwrap().len(), 3);
}

#[test]
fn a_second_concurrent_ship_on_the_same_state_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let opts = ShipOptions::new(d.path().join("state.json"));
    let held = std::fs::File::create(d.path().join("state.json.lock")).unwrap();
    held.lock().unwrap();
    let e = ship_once(&volume(1), &t, &opts).unwrap_err().to_string();
    assert!(e.contains("another ship"), "{e}");
    drop(held);
    ship_once(&volume(1), &t, &opts).unwrap();
}

#[test]
fn a_target_holding_another_volume_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let (a, b) = (volume(1), volume(1));
    let sa = ShipOptions::new(d.path().join("a.json"));
    ship_once(&a, &t, &sa).unwrap();
    std::fs::remove_dir_all(d.path().join("remote")).unwrap();
    let t = file_target(d.path());
    ship_once(&b, &t, &ShipOptions::new(d.path().join("b.json"))).unwrap();
    let e = ship_once(&a, &t, &sa).unwrap_err().to_string();
    assert!(e.contains("separate target per volume"), "{e}");
    assert_eq!(remote_list(&t).unwrap().len(), 1);
}

#[test]
fn one_volume_ships_to_two_targets_independently_with_progress() {
    let d = tempfile::tempdir().unwrap();
    let ta = Retrying::new(FileTarget::new(d.path().join("a")).unwrap(), Retry::none());
    let tb = Retrying::new(FileTarget::new(d.path().join("b")).unwrap(), Retry::none());
    let src = volume(4);
    let mut oa = ShipOptions::new(d.path().join("a.json"));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    oa.progress = Some(Arc::new(move |done, total| {
        seen2.lock().unwrap().push((done, total))
    }));
    let ob = ShipOptions::new(d.path().join("b.json"));
    let (a1, _) = ship(&src, &ta, &oa);
    let last = *seen.lock().unwrap().last().unwrap();
    assert_eq!(last, (1024, 1024), "full base examines every block");
    mutate(&src, 1);
    let (b1, shb1) = ship(&src, &tb, &ob);
    mutate(&src, 2);
    let (a2, sha2) = ship(&src, &ta, &oa);
    assert!(
        a1.full && b1.full && !a2.full,
        "each target has its own chain"
    );
    assert_ne!(a2.point_name, b1.point_name);
    assert_eq!(src.point_names().len(), 2, "one ship point per target");
    for (t, sha) in [(&ta, &sha2), (&tb, &shb1)] {
        let out = d.path().join(format!("{}.img", sha));
        remote_restore(t, PointSel::Latest, &out, &|_, _| {}).unwrap();
        assert_eq!(&file_sha(&out), sha);
    }
}

#[test]
fn lost_state_file_refreezes_instead_of_shipping_a_stale_leftover() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let src = volume(4);
    let opts = ShipOptions::new(d.path().join("state.json"));
    src.set_read_hook(Some(Box::new(|_| Err("injected".into()))));
    assert!(ship_once(&src, &t, &opts).is_err());
    src.set_read_hook(None);
    std::fs::remove_file(&opts.state_path).unwrap();
    src.write(0, &block_pattern(99, 0, 4096));
    let (info, sha) = ship(&src, &t, &opts);
    assert!(!info.resumed && info.seq == 1, "{info:?}");
    assert_eq!(
        sha,
        sha_hex(&src.image()),
        "the point holds the data written after the failure"
    );
    let out = d.path().join("r.img");
    remote_restore(&t, PointSel::Latest, &out, &|_, _| {}).unwrap();
    assert_eq!(file_sha(&out), sha);
}

#[test]
fn volume_size_not_a_multiple_of_the_block_size_restores_exactly() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let size = 1_000_003u64;
    let src = shipper::MemSource::new(BS, size);
    src.write(0, &block_pattern(8, 0, size as usize));
    let opts = ShipOptions::new(d.path().join("state.json"));
    ship(&src, &t, &opts);
    src.write(size - 10, &[0xAB; 10]);
    let (_, sha) = ship(&src, &t, &opts);
    let out = d.path().join("odd.img");
    remote_restore(&t, PointSel::Latest, &out, &|_, _| {}).unwrap();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
    assert_eq!(file_sha(&out), sha);
}

#[test]
fn scheduler_with_retention_keeps_the_point_count_bounded() {
    let d = tempfile::tempdir().unwrap();
    let t: Arc<dyn Target> = Arc::new(file_target(d.path()));
    let src = Arc::new(volume(2));
    let mut opts = ShipOptions::new(d.path().join("state.json"));
    opts.keep_points = Some(3);
    let s = Scheduler::start(src.clone(), t.clone(), opts, Duration::from_millis(20));
    // Keep writing until 12 points are committed (bounded: 60 s on a loaded machine).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut round = 0u64;
    while s.stats().points_committed < 12 && std::time::Instant::now() < deadline {
        src.write((round % 64) * 4096, &block_pattern(round, 0, 4096));
        round += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = s.stop();
    assert!(st.points_committed >= 12 && st.prunes >= 3, "{st:?}");
    assert!(st.last_error.is_none(), "{st:?}");
    let list = remote_list(&t).unwrap();
    assert!(list.len() <= 6, "bounded: {} points", list.len());
    assert!(list[0].full, "the oldest kept point is a base");
    assert!(remote_verify(&t).unwrap().ok());
    let last = list.last().unwrap().seq;
    let out = d.path().join("last.img");
    remote_restore(&t, PointSel::Seq(last), &out, &|_, _| {}).unwrap();
    assert_eq!(
        file_sha(&out),
        sha_hex(&src.point_image(&src.point_names()[0]).unwrap())
    );
}

/// Fails every segment PUT after the first `ok` ones.
struct FailingPuts {
    inner: FileTarget,
    ok: std::sync::atomic::AtomicUsize,
}

impl Target for FailingPuts {
    fn id(&self) -> String {
        self.inner.id()
    }
    fn put_new(&self, key: &str, data: &[u8]) -> Result<(), shipper::TargetError> {
        let left = self.ok.load(std::sync::atomic::Ordering::SeqCst);
        if left == 0 {
            // Fail slowly, like a request timing out: the producer fills the channel meanwhile.
            std::thread::sleep(Duration::from_millis(100));
            return Err(shipper::TargetError::new(
                shipper::TargetErrorKind::Permanent,
                key,
                "injected: disk full",
            ));
        }
        self.ok.store(left - 1, std::sync::atomic::Ordering::SeqCst);
        self.inner.put_new(key, data)
    }
    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, shipper::TargetError> {
        self.inner.get(key, max)
    }
    fn head(&self, key: &str) -> Result<Option<u64>, shipper::TargetError> {
        self.inner.head(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, shipper::TargetError> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), shipper::TargetError> {
        self.inner.delete(key)
    }
}

#[test]
fn failing_uploads_end_the_ship_with_the_upload_error_and_never_hang() {
    let d = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = d.path().to_path_buf();
    std::thread::spawn(move || {
        let t = FailingPuts {
            inner: FileTarget::new(dir.join("remote")).unwrap(),
            ok: 2.into(),
        };
        let mut opts = ShipOptions::new(dir.join("state.json"));
        opts.segment_bytes = 128 << 10;
        opts.zstd_level = None;
        let r = ship_once(&volume(16), &t, &opts)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let _ = tx.send((r, t.list("manifests/").unwrap().len()));
    });
    let (r, manifests) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("ship_once returned within 60 s");
    let e = r.unwrap_err();
    assert!(e.contains("injected: disk full"), "{e}");
    assert_eq!(manifests, 0, "nothing committed");
    assert!(
        !d.path().join("state.json.lock").exists(),
        "the failed ship left its lock file"
    );
}

#[test]
fn no_lock_file_stays_once_no_ship_runs() {
    let d = tempfile::tempdir().unwrap();
    let t = file_target(d.path());
    let opts = ShipOptions::new(d.path().join("state.json"));
    let src = volume(2);
    ship_once(&src, &t, &opts).unwrap();
    assert!(!d.path().join("state.json.lock").exists());
    // A ship that fails after taking the lock (another volume's state) removes it too.
    let other = ShipOptions::new(d.path().join("other.json"));
    std::fs::write(
        d.path().join("other.json"),
        std::fs::read_to_string(d.path().join("state.json"))
            .unwrap()
            .replace(|c: char| c.is_ascii_hexdigit() && c != '0', "0"),
    )
    .unwrap();
    assert!(ship_once(&src, &t, &other).is_err());
    assert!(!d.path().join("other.json.lock").exists());
    // A lock on a name that was unlinked by its holder does not block the next ship.
    let stale = std::fs::File::create(d.path().join("state.json.lock")).unwrap();
    stale.lock().unwrap();
    std::fs::remove_file(d.path().join("state.json.lock")).unwrap();
    mutate(&src, 1);
    assert!(ship_once(&src, &t, &opts).unwrap().committed);
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".lock"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
