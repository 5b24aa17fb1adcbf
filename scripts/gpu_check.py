"""The steps of scripts/gpu_check.sh, one sub-command each (docs/gpu_check.md). Each appends its rows to the
results files as soon as it has them; the shell script runs every step under its own timeout and records a
step that fails (or is skipped) itself, so a run cut off half way still reports what it measured.

    python scripts/gpu_check.py env        --step env --out OUT --work WORK [--cpu [--tiny]]
    python scripts/gpu_check.py data       --step data ...
    python scripts/gpu_check.py train      --step train-single-X --experiment X --trainer single|ddp|ddp2 ...
    python scripts/gpu_check.py clustering --step clustering ...
    python scripts/gpu_check.py cosine     --step cosine ...
    python scripts/gpu_check.py resume     --step resume ...

Results: `OUT/results.jsonl` (one JSON object per row: step, status, metric, value, goal, note) and the same
rows in `OUT/results.md` (a markdown table, header written by the shell script). GPU mode runs the
experiments as configured (`trainer=gpu`: bf16-mixed; `trainer=ddp`); `--cpu` swaps in `trainer=cpu` /
`trainer=ddp_sim` at 32-true, and `--tiny` a tiny synthetic corpus and tiny budgets, so that the whole check
runs on a 2-core box (gpu_check.sh --cpu, tests/test_gpu_check.py). GPU_CHECK_FAIL_STEP=<step> makes that step
raise (to test the recording).

Measurements reuse the project's own paths: training through `tasks.train.train` (the train.py body),
inference through `lightning_modules.clip_embedding.embed_clips` (the one clips -> vectors path), the
clustering share through `scripts/benchmark_clustering.py`, the bf16 / fp32 cosine through its
`time_pass_precisions`, the resume through `python train.py ... ckpt_path=last`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))  # benchmark_clustering's callbacks are named `benchmark_clustering.*`
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402

EXPERIMENTS = ("triplet_speaker", "contrastive_mtl", "distill_base", "ser_finetune")
TRAINING_OVER_INFERENCE_GOAL = 0.3  # training clips/s per GPU over the same model's inference clips/s
LOADER_OVER_TRAINING_GOAL = 3.0  # the loader's clips/s over the training clips/s
CLUSTERING_SHARE_GOAL = 0.05  # a re-clustering round's share of an epoch (scripts/benchmark_clustering.py)


@dataclass(frozen=True)
class Budget:
    warmup: int  # training steps not timed (CUDA context, cuDNN / oneDNN kernel choice, allocator)
    steps: int  # timed training steps
    inference_batches: int  # timed embedding batches (after one warm-up batch)
    loader_batches: int  # timed loader batches (after the first)
    workers: int  # data.num_workers of the training runs
    clustering_epochs: int
    clustering_batches: int  # data.batches_per_epoch of the clustering run
    big_speakers: int  # the k-means comparison's synthetic set (benchmark_clustering part 2)
    big_clips: int
    cosine_clips: int
    resume_batches: int  # batches per epoch of the 2-epoch resume run; SIGTERM lands mid-epoch 1


GPU_BUDGET = Budget(warmup=5, steps=30, inference_batches=10, loader_batches=30, workers=4, clustering_epochs=3,
                    clustering_batches=20, big_speakers=200, big_clips=100, cosine_clips=96, resume_batches=10)
CPU_BUDGET = Budget(warmup=1, steps=1, inference_batches=1, loader_batches=2, workers=0, clustering_epochs=2,
                    clustering_batches=2, big_speakers=20, big_clips=20, cosine_clips=4, resume_batches=2)

# --tiny: the tests' tiny corpus (8 speakers x 8 clips, 2 held out), 2 x 2 batches of 0.5 s crops, no sanity
# validation and one validation batch
CPU_DATA = ["data.corpus_options.n_speakers=8", "data.corpus_options.clips_per_emotion=2", "data.val_speakers=2",
            "data.n_speakers=2", "data.n_per_speaker=2"]
CPU_TRAIN = ["data.crop_seconds=0.5", "++trainer.num_sanity_val_steps=0", "++trainer.limit_val_batches=1"]
# --tiny: distill_base's 94 M-parameter student shrunk to CPU size (same structure: the 7-conv front end at
# 50 Hz with 64 channels, post-LN blocks, extra tokens, conv decoder, clone batch, top-k targets)
CPU_MODEL = {"distill_base": ["++backbone.conv_layers=[[64,10,5],[64,3,2],[64,3,2],[64,3,2],[64,3,2],[64,2,2],[64,2,2]]",
                              "model.encoder.dim=64", "model.encoder.depth=2", "model.encoder.heads=2",
                              "model.encoder.window_seconds=0.5", "model.encoder.window_hop_seconds=0.25",
                              "model.top_k=2", "model.clone_batch=2", "model.decoder.dim=32", "model.decoder.layers=1",
                              "model.decoder.groups=4"]}
TRAINERS = {  # (mode, kind) -> trainer overrides
    ("gpu", "single"): ["trainer=gpu"],  # 1 GPU, bf16-mixed
    ("gpu", "ddp"): ["trainer=ddp", "trainer.devices=1"],
    ("gpu", "ddp2"): ["trainer=ddp", "trainer.devices=2"],
    ("cpu", "single"): ["trainer=cpu", "trainer.precision=32-true"],
    # 2 CPU processes (gloo). strategy=ddp rather than ddp_sim's ddp_spawn: Lightning then re-launches this
    # script for rank 1, the same launcher as trainer=ddp on 2 GPUs
    ("cpu", "ddp"): ["trainer=ddp_sim", "trainer.strategy=ddp", "trainer.precision=32-true"],
}
QUIET = ["callbacks.progress_bar=null", "callbacks.model_summary=null", "+trainer.enable_progress_bar=false"]
NO_CHECKPOINTS = ["callbacks.model_checkpoint=null", "callbacks.latest_checkpoint=null"]


# ----- results -----
def append_row(out: Path, step: str, metric: str, value: float | None, status: str = "ok", goal: str = "",
               note: str = "") -> None:
    """One row to OUT/results.jsonl and OUT/results.md, written at once (a cut-off run keeps it)."""
    if not _is_rank_zero():
        return
    v = None if value is None or not math.isfinite(float(value)) else float(value)
    row = {"step": step, "status": status, "metric": metric, "value": v, "goal": goal, "note": note,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    shown = "–" if v is None else (f"{v:.6g}" if abs(v) < 1e6 else f"{v:.0f}")
    cells = [step, status, metric, shown, goal, note.replace("|", "/").replace("\n", " ")]
    with open(out / "results.md", "a") as f:
        f.write("| " + " | ".join(cells) + " |\n")
    print(f"[{step}] {metric}: {shown} {goal} {note}", flush=True)


def _is_rank_zero() -> bool:
    # Lightning's subprocess launcher re-runs this script for the other ranks (LOCAL_RANK / NODE_RANK set)
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def goal_text(value: float, goal: float) -> str:
    return f"≥ {goal:g} ({'met' if value >= goal else 'NOT met'})"


# ----- the measuring callback -----
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput(L.Callback):
    """Per process: training clips/s of the steps after `warmup_steps` (forward, loss, backward, optimizer
    step; from each batch's start to its end, so the loader's waits are left out, CUDA-synchronised), and,
    when training ends, the same model's inference clips/s (`embed_clips` on waveform crops of the training
    crop length, in the trainer's precision) and the training loader's clips/s (batches drawn as fast as it
    delivers them). Each rank writes `out_dir/throughput_rank<r>.json`.

    pause_at_step: after that optimizer step, wait (up to pause_seconds) for a SIGTERM, having written
    `out_dir/paused.json`: the resume check signals the run at a known step."""

    def __init__(self, out_dir: str, warmup_steps: int = 3, inference_batches: int = 0, loader_batches: int = 0,
                 pause_at_step: int | None = None, pause_seconds: float = 120.0):
        self.out_dir = Path(out_dir)
        self.warmup_steps, self.inference_batches = int(warmup_steps), int(inference_batches)
        self.loader_batches = int(loader_batches)
        self.pause_at_step = None if pause_at_step is None else int(pause_at_step)
        self.pause_seconds = float(pause_seconds)
        self.batches = self.steps = self.clips = 0
        self.step_seconds = 0.0
        self._t0 = self._first = self._last = None
        self.start_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = int(trainer.global_step)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batches += 1
        if self.batches > self.warmup_steps:
            _sync(pl_module.device)
            self._t0 = time.perf_counter()
            self._first = self._first or self._t0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._t0 is not None:
            _sync(pl_module.device)
            self._last = time.perf_counter()
            self.step_seconds += self._last - self._t0
            self.steps += 1
            self.clips += len(batch["index"])
            self._t0 = None
        if self.pause_at_step is not None and trainer.global_step == self.pause_at_step:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "paused.json").write_text(json.dumps({"step": int(trainer.global_step), "pid": os.getpid()}))
            deadline = time.monotonic() + self.pause_seconds
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        dm = trainer.datamodule
        res = {"rank": trainer.global_rank, "world_size": trainer.world_size, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "precision": str(trainer.precision), "start_step": self.start_step,
               "global_step": int(trainer.global_step), "timed_steps": self.steps, "timed_clips": self.clips,
               "crop_seconds": float(dm.hparams.crop_seconds)}
        if self.steps:
            res["train_clips_per_s"] = self.clips / self.step_seconds
            res["batch_clips"] = self.clips / self.steps
            # first timed batch's start to the last one's end: the loader's waits included
            res["train_clips_per_s_wall"] = self.clips / (self._last - self._first)
        if self.inference_batches and self.steps:
            res["inference_clips_per_s"] = self.inference_rate(pl_module, dm, round(res["batch_clips"]))
        if self.loader_batches:
            res["loader_clips_per_s"] = self.loader_rate(dm)
        if device.type == "cuda":
            res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"throughput_rank{trainer.global_rank}.json").write_text(json.dumps(res, indent=1))
        trainer.strategy.barrier("gpu_check.Throughput")  # every rank's file is written when fit returns

    def inference_rate(self, pl_module, dm, batch_size: int) -> float:
        from datamodules.audio import crop_or_pad
        from lightning_modules.clip_embedding import embed_clips

        n = int(dm.hparams.crop_seconds * dm.hparams.sample_rate)
        records = list(dm.train_records)[: batch_size * (self.inference_batches + 1)]
        source = getattr(dm, "prefix_source", None)
        dm.use_prefixes(None)  # audio in, as a user's clips come (the frozen prefix is computed inside)
        try:
            batches = [[crop_or_pad(w, n, random=False) for w in b["wavs"]]  # the eval crop, at the training length
                       for b in dm.utterance_loader(records, batch_size)]
        finally:
            dm.use_prefixes(source)
        embed_clips(pl_module, batches[0])  # warm-up (new shapes: kernel choice)
        timed = batches[1:] or batches
        _sync(pl_module.device)
        t0 = time.perf_counter()
        for crops in timed:
            embed_clips(pl_module, crops)  # returns float32 on the CPU: synchronised
        return sum(len(c) for c in timed) / (time.perf_counter() - t0)

    def loader_rate(self, dm) -> float:
        it = iter(dm.train_dataloader())
        next(it)  # worker start-up left out
        n, t0 = 0, time.perf_counter()
        for _ in range(self.loader_batches):
            try:
                n += len(next(it)["index"])
            except StopIteration:
                break
        return n / (time.perf_counter() - t0)


# ----- steps -----
def _common(args, log_dir: Path | None = None) -> list[str]:
    o = [f"paths.data_dir={args.work / 'data'}", f"paths.log_dir={log_dir or args.work / 'logs'}", *QUIET]
    return o + (CPU_DATA if args.tiny else [])


def _budget(args) -> Budget:
    b = CPU_BUDGET if args.tiny else GPU_BUDGET
    if args.steps:
        b = Budget(**{**b.__dict__, "steps": args.steps})
    return b


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _trainer_overrides(args, kind: str) -> list[str]:
    key = ("cpu" if args.cpu else "gpu", kind)
    if key not in TRAINERS:
        raise ValueError(f"no trainer for {key}")
    return TRAINERS[key]


def step_env(args) -> None:
    from callbacks.intra_speaker_clustering import faiss, use_faiss_gpu
    from scripts._bench_common import machine_description

    out, step = args.out, args.step
    cuda = torch.cuda.is_available()
    n = torch.cuda.device_count() if cuda else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(n)) or "none"
    append_row(out, step, "CUDA available", float(cuda), note=f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
               f"lightning {L.__version__}; {machine_description()}")
    append_row(out, step, "GPUs (torch)", float(n), note=names)
    append_row(out, step, "bf16 supported", float(cuda and torch.cuda.is_bf16_supported()))
    has_gpu_faiss = hasattr(faiss, "StandardGpuResources")
    append_row(out, step, "faiss GPUs", float(faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0),
               note=(f"faiss {faiss.__version__}: " + ("GPU build" if has_gpu_faiss else
                     "no GPU support in this faiss package (faiss-cpu): clustering k-means runs on the CPU")
                     + f"; clustering use_gpu=auto -> {'GPU' if use_faiss_gpu('auto') else 'CPU'}"))


def step_data(args) -> None:
    from hydra.utils import instantiate

    from utils.compose import compose_config

    cfg = compose_config("train.yaml", _common(args), args.work / "runs" / args.step)
    t0 = time.perf_counter()
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    seconds = time.perf_counter() - t0
    n = len(dm.train_records) + len(dm.val_records)
    append_row(args.out, args.step, "synthetic corpus clips (train + val)", float(n),
               note=f"{len(dm.train_records)} training, {len(dm.val_records)} validation clips in {args.work / 'data'}")
    append_row(args.out, args.step, "generation + manifest seconds", seconds, note="a cache hit when the corpus exists")


def step_train(args) -> None:
    from utils.compose import compose_config
    from tasks.train import train

    b = _budget(args)
    run = args.work / "runs" / args.step
    if _is_rank_zero():
        _fresh(run)
    rates = run / "throughput"
    trainer = _trainer_overrides(args, args.trainer)
    overrides = [f"experiment={args.experiment}", *trainer, *_common(args), *NO_CHECKPOINTS,
                 "trainer.min_epochs=1", "trainer.max_epochs=1", f"data.batches_per_epoch={b.warmup + b.steps}",
                 f"data.num_workers={b.workers}",
                 "+callbacks.gpu_check._target_=scripts.gpu_check.Throughput", f"+callbacks.gpu_check.out_dir={rates}",
                 f"+callbacks.gpu_check.warmup_steps={b.warmup}",
                 f"+callbacks.gpu_check.inference_batches={b.inference_batches}",
                 f"+callbacks.gpu_check.loader_batches={b.loader_batches}"]
    if args.tiny:
        overrides += CPU_TRAIN + CPU_MODEL.get(args.experiment, [])
    cfg = compose_config("train.yaml", overrides, run / "run")
    metrics, objs = train(cfg)
    if objs["trainer"].global_rank != 0 or not _is_rank_zero():
        return
    ranks = sorted(rates.glob("throughput_rank*.json"))
    per_rank = [json.loads(p.read_text()) for p in ranks]
    if not per_rank:
        raise RuntimeError(f"no throughput files in {rates}")
    r0 = per_rank[0]
    world = r0["world_size"]
    if len(per_rank) != world:
        raise RuntimeError(f"{len(per_rank)} throughput files for world size {world}")
    loss = next((v for k, v in metrics.items() if k == "train/loss"), None)
    if loss is None or not math.isfinite(loss):
        raise FloatingPointError(f"train/loss is {loss} at the end of the run")
    desc = (f"{' '.join(trainer)}; {r0['device_name']}, {r0['precision']}, world size {world}; "
            f"{r0['timed_steps']} timed steps (after {b.warmup}) x {r0['batch_clips']:.0f} clips of {r0['crop_seconds']} s")
    out, step = args.out, args.step
    train_rate = sum(r["train_clips_per_s"] for r in per_rank) / world  # per GPU / process
    append_row(out, step, "training clips/s per process", train_rate, note=desc)
    if world > 1:
        append_row(out, step, "training clips/s, all processes", sum(r["train_clips_per_s"] for r in per_rank),
                   note=", ".join(f"rank {r['rank']}: {r['train_clips_per_s']:.1f}" for r in per_rank))
    append_row(out, step, "training clips/s incl. loader waits", r0["train_clips_per_s_wall"],
               note="first timed batch's start to the last one's end, rank 0")
    inf = r0["inference_clips_per_s"]
    append_row(out, step, "inference clips/s (embed_clips, same crops)", inf,
               note=f"rank 0, {b.inference_batches} batches, trainer precision, from audio")
    ratio = train_rate / inf
    append_row(out, step, "training ÷ inference", ratio, goal=goal_text(ratio, TRAINING_OVER_INFERENCE_GOAL))
    loader = r0["loader_clips_per_s"]
    append_row(out, step, "loader clips/s", loader, note=f"the training loader, data.num_workers={b.workers}, rank 0")
    ratio = loader / train_rate
    append_row(out, step, "loader ÷ training", ratio, goal=goal_text(ratio, LOADER_OVER_TRAINING_GOAL))
    if "peak_memory_gib" in r0:
        append_row(out, step, "peak GPU memory GiB", r0["peak_memory_gib"], note="rank 0, torch.cuda.max_memory_allocated")
    append_row(out, step, "train/loss (last step)", loss)


def step_clustering(args) -> None:
    from benchmark_clustering import main as benchmark_clustering

    from callbacks.intra_speaker_clustering import faiss, resolve_pass_precision, use_faiss_gpu

    b = _budget(args)
    work = _fresh(args.work / "runs" / args.step)
    overrides = ["experiment=contrastive_mtl", *_trainer_overrides(args, "single"), *_common(args), *NO_CHECKPOINTS,
                 "trainer.min_epochs=1", f"trainer.max_epochs={b.clustering_epochs}",
                 f"data.batches_per_epoch={b.clustering_batches}",
                 *(CPU_TRAIN if args.tiny else [])]
    res = benchmark_clustering([*overrides, "--out", str(work), "--big-speakers", str(b.big_speakers),
                                "--big-clips", str(b.big_clips)])
    p = res["pipeline"]
    device = torch.device("cuda" if not args.cpu else "cpu")
    on_gpu = use_faiss_gpu("auto")
    faiss_note = (f"faiss {faiss.__version__} on the GPU" if on_gpu else
                  f"faiss {faiss.__version__} k-means on the CPU: this faiss package has no GPU support"
                  if not hasattr(faiss, "StandardGpuResources") else "faiss sees no GPU")
    out, step = args.out, args.step
    share = p["share_per_epoch"]
    append_row(out, step, "re-clustering share of an epoch", share,
               goal=f"≤ {CLUSTERING_SHARE_GOAL:g} ({'met' if share <= CLUSTERING_SHARE_GOAL else 'NOT met'})",
               note=f"mean round {p['round_seconds']:.2f} s (k-means {p['kmeans_seconds']:.3f} s) every "
                    f"{p['every_n_epochs']} epoch(s) vs epoch {p['epoch_seconds']:.2f} s; {len(p['rounds'])} rounds, "
                    f"{p['train_clips']} clips; pass precision {resolve_pass_precision('auto', device)}; {faiss_note}")
    append_row(out, step, "faiss k-means on GPU", float(on_gpu), note=faiss_note)
    for r in res["kmeans"]:
        append_row(out, step, f"k-means seconds, faiss, {r['set']}", r["faiss_s"],
                   note=f"{r['speakers']} speakers x {r['clips'] // max(1, r['speakers'])} clips, dim {r['dim']}, "
                        f"k={r['k']}; scikit-learn {r['sklearn_s']:.2f} s; "
                        f"ARI faiss vs sklearn {r['ari_faiss_vs_sklearn']:.3f}")


def step_cosine(args) -> None:
    from benchmark_clustering import time_pass_precisions

    b = _budget(args)
    work = _fresh(args.work / "runs" / args.step)
    device = "cpu" if args.cpu else "cuda"
    overrides = ["experiment=contrastive_mtl", *_common(args)]  # the pretrained GE2E (resemblyzer's weights)
    for output in ("embedding", "layer_stats"):
        rows = {r["variant"]: r for r in time_pass_precisions(overrides, work / output, b.cosine_clips, repeats=2,
                                                              device=device, output=output)}
        bf16, fp32 = rows["inference_mode bf16"], rows["inference_mode fp32"]
        note = f"GE2E, {bf16['clips']} whole clips on {device}, bf16 autocast vs fp32, inference_mode"
        append_row(args.out, args.step, f"bf16 vs fp32 {output} cosine, mean", bf16["mean_cosine_to_no_grad_fp32"],
                   note=note)
        append_row(args.out, args.step, f"bf16 vs fp32 {output} cosine, min", bf16["min_cosine_to_no_grad_fp32"])
        append_row(args.out, args.step, f"{output} pass clips/s, bf16 over fp32",
                   fp32["seconds_min"] / bf16["seconds_min"],
                   note=f"best of 2: fp32 {fp32['seconds_min']:.2f} s, bf16 {bf16['seconds_min']:.2f} s")


def _train_py(overrides: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PROJECT_ROOT=str(ROOT), WANDB_MODE="offline")
    env.pop("SER_RUN_DIR", None)
    f = open(log, "w")
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT, env=env, stdout=f,
                            stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, seconds: float, what: str, log: Path) -> None:
    try:
        rc = proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"{what}: still running after {seconds:.0f} s (log: {log})")
    if rc != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"{what}: train.py exited with {rc}; log {log}:\n{tail}")


def step_resume(args) -> None:
    """train.py (2 epochs) signalled with SIGTERM while it waits after step K, in the middle of epoch 1: exit 0 with
    last.ckpt at step K; the same command + ckpt_path=last continues that run from step K to the end."""
    b = _budget(args)
    work = _fresh(args.work / "runs" / args.step)
    total, kill_at = 2 * b.resume_batches, b.resume_batches + b.resume_batches // 2
    marks = work / "marks"
    overrides = ["experiment=triplet_speaker", *_trainer_overrides(args, "single"), *_common(args, work / "logs"),
                 "trainer.min_epochs=1", "trainer.max_epochs=2", f"data.batches_per_epoch={b.resume_batches}",
                 "+callbacks.gpu_check._target_=scripts.gpu_check.Throughput", f"+callbacks.gpu_check.out_dir={marks}",
                 "+callbacks.gpu_check.warmup_steps=0", f"+callbacks.gpu_check.pause_at_step={kill_at}",
                 *(CPU_TRAIN if args.tiny else [])]
    timeout = args.timeout

    log1 = work / "killed.log"
    t0 = time.perf_counter()
    proc = _train_py(overrides, log1)
    paused = marks / "paused.json"
    while not paused.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"train.py ended (rc {proc.returncode}) before step {kill_at}; log {log1}:\n"
                               + log1.read_text()[-2000:])
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise RuntimeError(f"train.py did not reach step {kill_at} in {timeout:.0f} s (log: {log1})")
        time.sleep(0.1)
    t_signal = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _wait(proc, 120, "the SIGTERM'd run", log1)
    exit_s = time.perf_counter() - t_signal
    runs = sorted((work / "logs" / "train" / "runs").iterdir())
    if len(runs) != 1:
        raise RuntimeError(f"expected one run folder, found {[r.name for r in runs]}")
    last = runs[0] / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise RuntimeError(f"no {last} after SIGTERM (log: {log1})")
    state = torch.load(last, map_location="cpu", weights_only=True)
    saved_step, saved_epoch = int(state["global_step"]), int(state["epoch"])
    append_row(args.out, args.step, "checkpoint step on SIGTERM", saved_step, goal=f"= {kill_at}",
               note=f"epoch {saved_epoch}, {b.resume_batches} batches per epoch; exit 0 {exit_s:.1f} s after the signal")
    if saved_step != kill_at or saved_epoch != 1:
        raise RuntimeError(f"last.ckpt after SIGTERM: step {saved_step}, epoch {saved_epoch}; "
                           f"expected step {kill_at}, epoch 1")

    paused.unlink()
    log2 = work / "resumed.log"
    _wait(_train_py([*overrides, "ckpt_path=last"], log2), timeout, "the resumed run", log2)
    runs_after = sorted((work / "logs" / "train" / "runs").iterdir())
    if runs_after != runs:
        raise RuntimeError(f"ckpt_path=last started a new run folder: {[r.name for r in runs_after]}")
    res = json.loads((marks / "throughput_rank0.json").read_text())
    final = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    append_row(args.out, args.step, "resumed run's first step", res["start_step"], goal=f"= {kill_at}",
               note=f"ckpt_path=last, same run folder {runs[0].name}, {res['device_name']}, {res['precision']}")
    append_row(args.out, args.step, "resumed run's last step", final, goal=f"= {total}",
               note=f"trainer.global_step {res['global_step']}")
    if res["start_step"] != kill_at or final != total or res["global_step"] != total:
        raise RuntimeError(f"resumed from step {res['start_step']} and ended at {final} / {res['global_step']}; "
                           f"expected {kill_at} -> {total}")


STEPS = {"env": step_env, "data": step_data, "train": step_train, "clustering": step_clustering,
         "cosine": step_cosine, "resume": step_resume}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=sorted(STEPS))
    ap.add_argument("--step", required=True, help="the step's name in the results")
    ap.add_argument("--out", type=Path, required=True, help="results folder (results.jsonl, results.md)")
    ap.add_argument("--work", type=Path, required=True, help="corpus, runs and caches")
    ap.add_argument("--cpu", action="store_true", help="CPU trainers (trainer=cpu, trainer=ddp_sim) at 32-true")
    ap.add_argument("--tiny", action="store_true", help="tiny corpus, crops, models and budgets (CPU rehearsal)")
    ap.add_argument("--experiment", choices=EXPERIMENTS)
    ap.add_argument("--trainer", choices=["single", "ddp", "ddp2"], default="single")
    ap.add_argument("--steps", type=int, default=0, help="timed training steps (0: the mode's budget)")
    ap.add_argument("--timeout", type=float, default=300, help="resume: seconds each train.py run may take")
    # Lightning's DDP launcher re-runs this script for the other ranks with Hydra's run-dir arguments appended
    args, extra = ap.parse_known_args(argv)
    unknown = [a for a in extra if not a.startswith("hydra.")]
    if unknown:
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.out, args.work = args.out.resolve(), args.work.resolve()
    if os.environ.get("GPU_CHECK_FAIL_STEP") == args.step:
        raise RuntimeError(f"failure injected into step {args.step} (GPU_CHECK_FAIL_STEP)")
    if os.environ.get("GPU_CHECK_KILL_STEP") == args.step:  # as the out-of-memory killer ends a process
        os.kill(os.getpid(), signal.SIGKILL)
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("torch.cuda.is_available() is False: run with --cpu, or on a machine with a GPU")
    STEPS[args.command](args)


if __name__ == "__main__":
    main()
