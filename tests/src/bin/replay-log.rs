//! `snapblk-replay-log`: replays a dm-log-writes log onto a device or image, for the VM
//! power-cut scenario (tests/vm/scenarios/power-cut.sh). xfstests' `replay-log` does the
//! same but is not packaged here; the log format is in `snapblk_tests::logwrites`.
//!
//! ```text
//! snapblk-replay-log list LOG                 one line per entry: INDEX FLAGS SECTOR COUNT [MARK]
//! snapblk-replay-log mark LOG NAME            the index of mark NAME
//! snapblk-replay-log replay LOG DEV FROM TO [--drop-seed SEED --undo FILE]
//!     apply entries FROM..TO onto DEV (DEV must hold the replay up to FROM); with
//!     --drop-seed, drop a random half of the writes after the last flush before TO that
//!     are not FUA (a power cut losing part of a volatile cache), saving what is
//!     overwritten to FILE so that `undo` can take DEV back to entry FROM
//! snapblk-replay-log undo DEV FILE
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::process::ExitCode;

use fixtures::Rng;
use snapblk_tests::logwrites::{self, Log, DISCARD, FLUSH, FUA, MARK};

fn usage() -> ExitCode {
    eprintln!(
        "usage: snapblk-replay-log list LOG | mark LOG NAME | replay LOG DEV FROM TO [--drop-seed SEED --undo FILE] | undo DEV FILE"
    );
    ExitCode::from(2)
}

fn open_log(path: &str) -> io::Result<Log> {
    Log::open(File::open(path)?)
}

fn open_dev(path: &str) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

fn flags(f: u64) -> String {
    let mut s = String::new();
    for (bit, c) in [(FLUSH, 'F'), (FUA, 'U'), (DISCARD, 'D'), (MARK, 'M')] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if s.is_empty() {
        s.push('W');
    }
    s
}

fn save_undo(path: &str, saved: &[(u64, Vec<u8>)]) -> io::Result<()> {
    let mut f = File::create(path)?;
    for (off, data) in saved {
        f.write_all(&off.to_le_bytes())?;
        f.write_all(&(data.len() as u64).to_le_bytes())?;
        f.write_all(data)?;
    }
    f.sync_all()
}

fn load_undo(path: &str) -> io::Result<Vec<(u64, Vec<u8>)>> {
    let mut all = Vec::new();
    File::open(path)?.read_to_end(&mut all)?;
    let mut out = Vec::new();
    let mut at = 0;
    let word = |b: &[u8], at: usize| -> io::Result<u64> {
        b.get(at..at + 8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "undo file cut short"))
    };
    while at < all.len() {
        let off = word(&all, at)?;
        let len = word(&all, at + 8)? as usize;
        let data = all
            .get(at + 16..at + 16 + len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "undo file cut short"))?;
        out.push((off, data.to_vec()));
        at += 16 + len;
    }
    Ok(out)
}

fn run(args: &[String]) -> io::Result<Option<ExitCode>> {
    let num = |s: &str| -> io::Result<usize> {
        s.parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("not a number: {s}")))
    };
    match args {
        [cmd, log] if cmd == "list" => {
            let log = open_log(log)?;
            let mut out = io::stdout().lock();
            for (i, e) in log.entries.iter().enumerate() {
                writeln!(
                    out,
                    "{i} {} {} {} {}",
                    flags(e.flags),
                    e.sector,
                    e.count,
                    e.mark
                )?;
            }
        }
        [cmd, log, name] if cmd == "mark" => match open_log(log)?.find_mark(name) {
            Some(i) => println!("{i}"),
            None => {
                eprintln!("no mark {name:?} in {log}");
                return Ok(Some(ExitCode::from(1)));
            }
        },
        [cmd, log, dev, from, to, rest @ ..] if cmd == "replay" => {
            let log = open_log(log)?;
            let dev = open_dev(dev)?;
            let (from, to) = (num(from)?, num(to)?);
            let (applied, dropped) = match rest {
                [] => log.replay(&dev, from, to, None, None)?,
                [a, seed, b, undo] if a == "--drop-seed" && b == "--undo" => {
                    let mut rng = Rng::new(num(seed)? as u64);
                    let mut keep = |_: usize| rng.below(2) == 0;
                    let mut saved = Vec::new();
                    let r = log.replay(&dev, from, to, Some(&mut keep), Some(&mut saved))?;
                    save_undo(undo, &saved)?;
                    r
                }
                _ => return Ok(Some(usage())),
            };
            println!("applied {applied} dropped {dropped}");
        }
        [cmd, dev, undo] if cmd == "undo" => {
            logwrites::undo(&open_dev(dev)?, &load_undo(undo)?)?;
        }
        _ => return Ok(Some(usage())),
    }
    Ok(None)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(code)) => code,
        Err(e) => {
            eprintln!("snapblk-replay-log: {e}");
            ExitCode::from(1)
        }
    }
}
