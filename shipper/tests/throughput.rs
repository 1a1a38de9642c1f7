//! Throughput figures (ignored by default): `cargo test -p shipper --release --test throughput -- --ignored --nocapture`.

mod common;

use common::garage::{Garage, BUCKET};
use common::*;
use shipper::{
    remote_restore, ship_once, target_from_url, FileTarget, PointSel, Retry, Retrying, ShipOptions,
    Target,
};
use std::time::Instant;

fn measure(name: &str, t: &dyn Target, dir: &std::path::Path, mib: u64) {
    let src = shipper::MemSource::new(BS, mib << 20);
    // Half incompressible noise, half zero: a realistic-ish sparse disk.
    src.write(0, &block_pattern(3, 0, ((mib << 20) / 2) as usize));
    let opts = ShipOptions::new(dir.join(format!("{name}.state")));
    let info = ship_once(&src, t, &opts).unwrap();
    let secs = info.elapsed.as_secs_f64();
    eprintln!(
        "{name}: full base of {mib} MiB volume: {} data blocks, {:.1} MiB uploaded in {secs:.2} s = {:.1} MiB/s read, {:.1} MiB/s uploaded",
        info.data_blocks,
        info.bytes_uploaded as f64 / 1048576.0,
        info.bytes_read as f64 / 1048576.0 / secs,
        info.bytes_uploaded as f64 / 1048576.0 / secs
    );
    src.write(4096 * 1000, &block_pattern(4, 0, 16 << 20));
    let inc = ship_once(&src, t, &opts).unwrap();
    eprintln!(
        "{name}: increment of 16 MiB changed: {:.2} s",
        inc.elapsed.as_secs_f64()
    );
    let out = dir.join(format!("{name}.img"));
    let start = Instant::now();
    let r = remote_restore(t, PointSel::Latest, &out, &|_, _| {}).unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{name}: restore {:.1} MiB downloaded in {secs:.2} s = {:.1} MiB/s of image",
        r.bytes_downloaded as f64 / 1048576.0,
        (mib as f64) / secs
    );
    assert_eq!(
        file_sha(&out),
        sha_hex(&src.point_image(&inc.point_name).unwrap())
    );
}

#[test]
#[ignore]
fn throughput_file_and_s3() {
    let d = tempfile::tempdir().unwrap();
    let t = Retrying::new(
        FileTarget::new(d.path().join("remote")).unwrap(),
        Retry::none(),
    );
    measure("file", &t, d.path(), 256);
    if let Some(g) = Garage::start(&d.path().join("garage")) {
        let t = target_from_url(&format!("s3://{BUCKET}/tp"), &g.creds()).unwrap();
        measure("s3", t.as_ref(), d.path(), 256);
    }
}
