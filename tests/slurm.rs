//! A sweep spread over a real Slurm job array: a one-node cluster of Debian's `slurm-wlm` and
//! `munge` (tests/slurm/start.sh) runs `sbatch --wait --array` with task ids that start at 5
//! and step by 2 (so `--shard auto` must use SLURM_ARRAY_TASK_MIN, _COUNT and _STEP, not the
//! id itself); `gpu-train gather` puts the parts together, and the whole sweep's manifest is
//! the unsharded array's, byte for byte, each member's weights bit for bit its unsharded
//! twin's (CPU). A part missing is named, with its members, by gather; the scheduler
//! variables' mistakes are one-line errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use gpu_train::modelfile;

/// The cluster, stopped when the test ends (pass or fail).
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo().join("tests/slurm/stop.sh")).arg(&self.dir).status();
    }
}

/// A one-node Slurm under `dir`, or None (skipped outside CI) where Slurm is not installed.
fn cluster(dir: &Path) -> Option<Cluster> {
    if Command::new("slurmctld").arg("-V").output().is_err() {
        let msg = "slurmctld is not installed (Debian: apt-get install slurm-wlm munge)";
        assert!(!ci(), "CI=true but {msg}");
        eprintln!("skipping: {msg}");
        return None;
    }
    let o = Command::new("bash").arg(repo().join("tests/slurm/start.sh")).arg(dir).output().unwrap();
    let mut cluster = Cluster { dir: dir.to_path_buf(), conf: String::new() };
    assert!(o.status.success(), "slurm did not start: {}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let conf = out.lines().find_map(|l| l.strip_prefix("export SLURM_CONF=")).expect("start.sh prints SLURM_CONF");
    cluster.conf = conf.to_string();
    Some(cluster)
}

const SWEEP: [&str; 14] = [
    "--arch",
    "mlp",
    "--backend",
    "cpu",
    "--threads",
    "1",
    "--epochs",
    "2",
    "--limit",
    "1500",
    "--seeds",
    "1,2",
    "--sweep",
    "lr=0.001,0.003,0.01",
];

#[test]
fn a_sweep_on_a_slurm_job_array_gathers_into_the_unsharded_arrays_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(slurm) = cluster(&tmp.path().join("slurm")) else { return };
    let (full, parts) = (tmp.path().join("full/sweep.safetensors"), tmp.path().join("parts/sweep.safetensors"));
    let bin = env!("CARGO_BIN_EXE_gpu-train");
    // The batch script a user writes (docs/cluster.md), with this test's paths.
    let script = tmp.path().join("sweep.sbatch");
    let args: Vec<String> = SWEEP.iter().map(|s| format!("'{s}'")).collect();
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n#SBATCH --job-name=gpu-train-sweep\n#SBATCH --cpus-per-task=1\n#SBATCH --output={}/task-%a.log\ncd {}\nexec {bin} train {} --no-checkpoint --shard auto --out {}\n",
            p(tmp.path()),
            p(&repo()),
            args.join(" "),
            p(&parts)
        ),
    )
    .unwrap();
    // Ids 5 and 7 of a job array: parts 0 and 1 (3 members each). The unsharded run goes on
    // meanwhile.
    // Bounded: a cluster that never runs the tasks fails the test instead of hanging CI.
    let sbatch = Command::new("timeout")
        .args(["300", "sbatch", "--wait", "--array=5-7:2", p(&script)])
        .env("SLURM_CONF", &slurm.conf)
        .current_dir(tmp.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (code, out, err) = gpu_train_cmd(&[&SWEEP[..], &["--no-checkpoint", "--out", p(&full)]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let done = sbatch.wait_with_output().unwrap();
    let logs: Vec<String> = ["5", "7"]
        .iter()
        .map(|i| std::fs::read_to_string(tmp.path().join(format!("task-{i}.log"))).unwrap_or_default())
        .collect();
    assert!(done.status.success(), "sbatch --wait failed; the tasks' logs:\n{}", logs.join("\n"));
    assert!(logs[0].contains("part 0 of 2") && logs[1].contains("part 1 of 2"), "{}", logs.join("\n"));

    let (code, out, err) = gpu_train_cmd(&["gather", "--out", p(&parts)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gathered 6 members from 2 parts"), "{out}");
    let read = |path: &Path| std::fs::read_to_string(path).unwrap();
    let (whole, sharded) = (read(&full.with_extension("members.json")), read(&parts.with_extension("members.json")));
    assert_eq!(sharded, whole, "the gathered manifest differs from the unsharded array's");
    let manifest: serde_json::Value = serde_json::from_str(&whole).unwrap();
    let members = manifest["members"].as_array().unwrap();
    assert_eq!(members.len(), 6);
    for m in members {
        let file = m["file"].as_str().unwrap();
        let (a, b) = (
            modelfile::load(&full.with_file_name(file), None).unwrap(),
            modelfile::load(&parts.with_file_name(file), None).unwrap(),
        );
        assert!(
            a.params == b.params && a.state == b.state,
            "{file}: the part's weights differ from the unsharded array's"
        );
    }
    assert!(parts.with_extension("report.html").is_file(), "gather writes the sweep's report");

    // A part gone (its job failed): gather names it and its members.
    std::fs::remove_file(tmp.path().join("parts/sweep.shard-1-of-2.members.json")).unwrap();
    let e = one_line_error(&["gather", "--out", p(&parts)]);
    assert!(e.contains("part 1 of 2") && e.contains("sweep-s1-lr0.01") && e.contains("missing"), "{e}");
}

#[test]
fn the_schedulers_variables_are_checked() {
    let run = |env: &[(&str, &str)], shard: &str| -> String {
        let mut c = Command::new(env!("CARGO_BIN_EXE_gpu-train"));
        c.args([
            "--arch",
            "mlp",
            "--seeds",
            "1..4",
            "--epochs",
            "1",
            "--limit",
            "10",
            "--backend",
            "cpu",
            "--shard",
            shard,
        ]);
        c.args(["--out", "/nonexistent/never-written.safetensors"]).current_dir(repo());
        for v in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP"] {
            c.env_remove(v);
        }
        c.env_remove("SLURM_ARRAY_TASK_MAX").env_remove("JOB_COMPLETION_INDEX").envs(env.iter().copied());
        let o = c.output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).trim().to_string()
    };
    assert!(run(&[], "auto").contains("neither Slurm's job array"));
    // `--array=1,4,5`: not evenly spaced.
    let list = [
        ("SLURM_ARRAY_TASK_ID", "4"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_TASK_MAX", "5"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ];
    assert!(run(&list, "auto").contains("not an evenly spaced range"));
    assert!(run(&[("JOB_COMPLETION_INDEX", "1")], "auto").contains("use --shard auto/N"));
    assert!(run(&[("JOB_COMPLETION_INDEX", "4")], "auto/4").contains("not a part of 4"));
    assert!(run(&[], "2/2").contains("counted from 0"));
    assert!(run(&[], "0/5").contains("4 members"));
}
