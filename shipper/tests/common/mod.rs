//! Shared helpers of the shipper's integration tests.
#![allow(dead_code)]

pub mod garage;

pub use fixtures::block_pattern;
use sha2::{Digest, Sha256};
use shipper::{
    remote_restore, ship_once, Credentials, MemSource, PointInfo, PointSel, Retry, ShipOptions,
    Target,
};
use std::path::Path;

pub const BS: u32 = 4096;

pub fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn file_sha(path: &Path) -> String {
    sha_hex(&std::fs::read(path).unwrap())
}

/// A volume of `mib` MiB: the first half noisy, a few scattered blocks, the rest zero.
pub fn volume(mib: u64) -> MemSource {
    let size = mib << 20;
    let src = MemSource::new(BS, size);
    src.write(0, &block_pattern(1, 0, (size / 2) as usize));
    for i in 0..8u64 {
        let b = (size / BS as u64) * 5 / 8 + i * 13;
        src.write(b * BS as u64, &block_pattern(100 + i, 0, BS as usize));
    }
    src
}

/// A change round: overwrite a run, zero a run, rewrite a block with identical content
/// (changed-block superset), write a partial block.
pub fn mutate(src: &MemSource, round: u64) {
    let size = src.image().len() as u64;
    let bs = BS as u64;
    src.write(
        (round * 37 % 200) * bs,
        &block_pattern(1000 + round, 0, (40 * bs) as usize),
    );
    src.write((300 + round) * bs, &vec![0u8; (10 * bs) as usize]);
    let same = src.image()[(50 * bs) as usize..(51 * bs) as usize].to_vec();
    src.write(50 * bs, &same);
    src.write(size - bs - 100, &block_pattern(2000 + round, 0, 300));
}

/// Ships a small volume once to `target` with a fresh state, expecting it to fail.
pub fn ship_error(target: &dyn Target) -> shipper::Error {
    let d = tempfile::tempdir().unwrap();
    match ship_once(
        &volume(1),
        target,
        &ShipOptions::new(d.path().join("s.json")),
    ) {
        Ok(info) => panic!("the ship succeeded: {info:?}"),
        Err(e) => e,
    }
}

/// Well-formed S3 settings for a server on loopback `port` that is not Garage (nobody,
/// or a stand-in): the keys are never accepted by a real server.
pub fn loopback_s3_creds(port: u16, retry: Retry) -> Credentials {
    Credentials {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("garage".into()),
        access_key: Some("GK000000000000000000000000".into()),
        secret_key: Some("s".repeat(64)),
        peer_key: None,
        retry,
    }
}

/// Ships once and returns the info plus the SHA-256 of the frozen point's image.
pub fn ship(src: &MemSource, target: &dyn Target, opts: &ShipOptions) -> (PointInfo, String) {
    let info = ship_once(src, target, opts).unwrap_or_else(|e| panic!("ship failed: {e}"));
    assert!(info.committed);
    let img = src
        .point_image(&info.point_name)
        .expect("committed point kept locally");
    (info, sha_hex(&img))
}

/// Full scenario: base, two increments; restore every point and compare SHA-256s.
/// Returns `(seq, sha)` of each point.
pub fn ship_change_restore_all(target: &dyn Target, dir: &Path) -> Vec<(u64, String)> {
    let src = volume(8);
    let opts = ShipOptions::new(dir.join("state.json"));
    let mut points = Vec::new();
    for round in 0..3 {
        if round > 0 {
            mutate(&src, round);
        }
        let (info, sha) = ship(&src, target, &opts);
        assert_eq!(info.seq, round + 1);
        assert_eq!(info.full, round == 0);
        if round == 0 {
            // Sparse base: zero blocks are not sent.
            assert!(info.data_blocks < 2048 / 2 + 20, "{info:?}");
        } else {
            assert!(info.data_blocks <= 60 && info.zero_blocks >= 10, "{info:?}");
        }
        points.push((info.seq, sha));
    }
    assert_eq!(
        src.point_names().len(),
        1,
        "older ship points are dropped after commit"
    );
    for (seq, sha) in &points {
        let out = dir.join(format!("restore-{seq}.img"));
        let r = remote_restore(target, PointSel::Seq(*seq), &out, &|_, _| {})
            .unwrap_or_else(|e| panic!("restore {seq}: {e}"));
        assert_eq!(r.seq, *seq);
        assert_eq!(&file_sha(&out), sha, "point {seq} restored byte-exact");
    }
    let latest = dir.join("restore-latest.img");
    let seen = std::sync::Mutex::new(Vec::new());
    let r = remote_restore(target, PointSel::Latest, &latest, &|d, t| {
        seen.lock().unwrap().push((d, t))
    })
    .unwrap();
    assert_eq!(file_sha(&latest), points[2].1);
    let seen = seen.into_inner().unwrap();
    let total = seen[0].1;
    assert_eq!(seen.first(), Some(&(0, total)), "progress starts at 0");
    assert_eq!(seen.last(), Some(&(total, total)), "progress ends at total");
    assert_eq!(r.segments_read, total);
    let v = shipper::remote_verify(target).unwrap();
    assert!(v.ok(), "{v:?}");
    assert_eq!(v.points.len(), 3);
    points
}
