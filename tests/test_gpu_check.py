"""scripts/gpu_check.sh, the one prepared GPU check (docs/gpu_check.md), rehearsed end to end on CPU (`--cpu`:
trainer=cpu / trainer=ddp_sim at 32-true, tiny corpus and budgets): every step leaves rows with numbers, a step
that fails is recorded as failed while the steps after it still run, and GPU mode without CUDA stops with a
clear error."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
EXPERIMENTS = ("triplet_speaker", "contrastive_mtl", "distill_base", "ser_finetune")
STEPS = ["env", "data", *(f"train-single-{e}" for e in EXPERIMENTS), "clustering", "cosine", "resume",
         *(f"train-ddp-{e}" for e in EXPERIMENTS)]
# The failure injected into the run (GPU_CHECK_FAIL_STEP). The triplet objective still trains in this run:
# under DDP (train-ddp-triplet_speaker) and in the resume step.
INJECTED = "train-single-triplet_speaker"
TRAIN_METRICS = {"training clips/s per process", "training clips/s incl. loader waits",
                 "inference clips/s (embed_clips, same crops)", "training ÷ inference", "loader clips/s",
                 "loader ÷ training", "train/loss (last step)"}


def _run(*args: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    extra = env or {}
    env = dict(os.environ, PYTHON=sys.executable)  # the interpreter running the tests (its venv)
    env.pop("GPU_CHECK_FAIL_STEP", None)
    env.pop("GPU_CHECK_KILL_STEP", None)
    env.update(extra)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _rows(out: Path) -> dict[str, list[dict]]:
    by_step: dict[str, list[dict]] = defaultdict(list)
    for line in (out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step[row["step"]].append(row)
    return by_step


def _value(rows: list[dict], metric: str) -> float:
    (row,) = [r for r in rows if r["metric"] == metric]
    return row["value"]


@pytest.mark.slow
def test_cpu_rehearsal_reports_every_step_and_records_a_failed_one(tmp_path):
    out = tmp_path / "out"
    proc = _run("--cpu", "--out", str(out), "--work", str(tmp_path / "work"), "--fail-step", INJECTED, timeout=1800)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-2000:]  # one step failed: the run says so
    by_step = _rows(out)
    assert list(by_step) == STEPS  # every step reported, in the script's order

    # the injected failure: one row, failed, with the cause; the steps after it ran
    (failed,) = by_step[INJECTED]
    assert failed["status"] == "failed" and failed["value"] is None
    assert "failure injected" in failed["note"] and f"logs/{INJECTED}.log" in failed["note"]
    assert (out / "logs" / f"{INJECTED}.log").is_file()

    for step in STEPS:
        if step == INJECTED:
            continue
        rows = by_step[step]
        bad = [r for r in rows if r["status"] != "ok"]
        assert not bad, f"{step}: {bad}\n{(out / 'logs' / f'{step}.log').read_text()[-3000:]}"
        assert all(r["value"] is not None and math.isfinite(r["value"]) for r in rows), rows

    assert _value(by_step["env"], "CUDA available") in (0.0, 1.0)
    assert _value(by_step["data"], "synthetic corpus clips (train + val)") == 64  # 8 speakers x 4 emotions x 2
    for step in STEPS:
        if step.startswith("train-") and step != INJECTED:
            rows = by_step[step]
            assert TRAIN_METRICS <= {r["metric"] for r in rows}, step
            assert all(_value(rows, m) > 0 for m in TRAIN_METRICS - {"train/loss (last step)"}), rows
            inference = _value(rows, "inference clips/s (embed_clips, same crops)")
            assert _value(rows, "training ÷ inference") == pytest.approx(
                _value(rows, "training clips/s per process") / inference, rel=1e-4)
            if step.startswith("train-ddp-"):  # ddp_sim: 2 processes, both measured
                assert "world size 2" in rows[0]["note"]
                assert _value(rows, "training clips/s, all processes") > _value(rows, "training clips/s per process")

    clustering = by_step["clustering"]
    assert 0 < _value(clustering, "re-clustering share of an epoch")
    assert _value(clustering, "faiss k-means on GPU") in (0.0, 1.0)
    cosine = by_step["cosine"]
    for output in ("embedding", "layer_stats"):
        low, mean = (_value(cosine, f"bf16 vs fp32 {output} cosine, {s}") for s in ("min", "mean"))
        assert 0.99 < low <= mean <= 1 + 1e-6
    resume = by_step["resume"]  # 2 epochs x 2 batches, SIGTERM after step 3 (mid-epoch 1)
    assert _value(resume, "checkpoint step on SIGTERM") == _value(resume, "resumed run's first step") == 3
    assert _value(resume, "resumed run's last step") == 4

    md = (out / "results.md").read_text()
    for step in STEPS:
        assert f"| {step} | " in md
    assert f"| {INJECTED} | failed |" in md
    assert f"{len(STEPS) - 1} steps ok, 1 failed, 0 skipped" in md


def test_out_of_budget_steps_are_recorded_as_skipped(tmp_path):
    out = tmp_path / "out"
    proc = _run("--cpu", "--out", str(out), "--work", str(tmp_path / "work"), "--budget-s", "1", timeout=300)
    assert proc.returncode == 1
    by_step = _rows(out)
    assert list(by_step) == STEPS
    assert all([r["status"] for r in rows] == ["skipped"] and "time budget" in rows[0]["note"]
               for rows in by_step.values())


def test_a_killed_step_is_not_reported_as_a_timeout(tmp_path):
    """A step the kernel kills (SIGKILL, e.g. out of memory) well before its limit says so; it was reported as
    'timed out after 1463s' when distill_base ran out of memory after seconds."""
    out = tmp_path / "out"
    proc = _run("--cpu", "--out", str(out), "--work", str(tmp_path / "work"), "--only", "env", timeout=300,
                env={"GPU_CHECK_KILL_STEP": "env"})
    assert proc.returncode == 1
    (row,) = _rows(out)["env"]
    assert row["status"] == "failed" and "killed (SIGKILL)" in row["note"] and "timed out" not in row["note"]


def test_gpu_mode_without_cuda_stops_with_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: GPU mode would run the whole check")
    out = tmp_path / "out"
    proc = _run("--out", str(out), "--work", str(tmp_path / "work"), timeout=300)
    assert proc.returncode == 2
    assert "torch.cuda.is_available() is False" in proc.stderr and "--cpu" in proc.stderr
    (row,) = _rows(out)["preflight"]
    assert row["status"] == "failed"
