//! `impl PointSource for snapmap::Engine`: ship a real engine's internal ship points and
//! restore them byte-exact.

mod common;

use common::*;
use shipper::{
    remote_restore, remote_verify, ship_once, FileTarget, PointSel, Retry, Retrying, ShipOptions,
};
use snapmap::{Engine, OpenOptions};
use std::sync::Arc;

fn point_sha(e: &Engine, name: &str) -> String {
    let mut img = vec![0u8; e.size() as usize];
    e.read_snapshot(name, 0, &mut img).unwrap();
    sha_hex(&img)
}

#[test]
fn engine_ship_change_ship_restore_every_point() {
    let d = tempfile::tempdir().unwrap();
    let size = 8u64 << 20;
    let opts = OpenOptions {
        size: Some(size),
        ..Default::default()
    };
    let engine = Arc::new(
        Engine::open_files(
            &d.path().join("backing.img"),
            &d.path().join("store"),
            &opts,
        )
        .unwrap(),
    );
    let t = Retrying::new(
        FileTarget::new(d.path().join("remote")).unwrap(),
        Retry::none(),
    );
    let sopts = ShipOptions::new(d.path().join("state.json"));
    engine
        .write(0, &block_pattern(1, 0, (size / 2) as usize))
        .unwrap();
    engine.create_snapshot("user-snap").unwrap();

    let mut points = Vec::new();
    for round in 0..3u64 {
        if round > 0 {
            engine
                .write(round * 40 * 4096, &block_pattern(10 + round, 0, 64 * 4096))
                .unwrap();
            engine.write_zeroes((600 + round) * 4096, 8 * 4096).unwrap();
            engine.discard((900 + round * 3) * 4096, 4096).unwrap();
            engine
                .write(size - 700, &block_pattern(20 + round, 0, 500))
                .unwrap(); // partial block
        }
        let info = ship_once(engine.as_ref(), &t, &sopts).unwrap();
        assert!(
            info.committed && info.seq == round + 1 && info.full == (round == 0),
            "{info:?}"
        );
        if round > 0 {
            assert!(
                info.data_blocks + info.zero_blocks < 200,
                "incremental, not full: {info:?}"
            );
        }
        points.push((info.seq, point_sha(&engine, &info.point_name)));
        // One internal ship point at a time; user snapshots untouched and unaware.
        let internal: Vec<_> = engine
            .all_snapshots()
            .into_iter()
            .filter(|s| s.internal)
            .collect();
        assert_eq!(internal.len(), 1, "{internal:?}");
        assert_eq!(
            engine
                .snapshots()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            vec!["user-snap"]
        );
    }
    for (seq, sha) in &points {
        let out = d.path().join(format!("r{seq}.img"));
        remote_restore(&t, PointSel::Seq(*seq), &out, &|_, _| {}).unwrap();
        assert_eq!(&file_sha(&out), sha, "point {seq}");
    }
    assert!(remote_verify(&t).unwrap().ok());
}
