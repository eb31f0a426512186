"""The Slurm templates (``slurm/*.sbatch``) run as Slurm runs them, and ``Singularity.def`` holds
what the image needs.

Each script runs with the variables sbatch gives a batch script (1 node x 2 tasks) and with
stand-ins for the two programs it calls (``tests/slurm_standins/``): ``srun`` starts SLURM_NTASKS
copies of its command here with each task's SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID, and
``singularity exec`` runs its command with this venv's ``python``. Everything after them is real:
Lightning's ``SLURMEnvironment`` takes the ranks from those variables, and the job trains on the CPU
over gloo (fit flags after the script's own override its GPU settings). The image itself cannot be
built here (no singularity): its definition is checked by reading, its ``%test`` fit flags by parsing.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from debate_lightning.models.embedded import cache_root

ROOT = Path(__file__).resolve().parents[1]
SLURM = ROOT / "slurm"
STANDINS = Path(__file__).resolve().parent / "slurm_standins"
DEFINITION = ROOT / "Singularity.def"
CONSTRAINTS = ROOT / "constraints.txt"
# The scripts ask for GPUs and bf16; on this machine the job runs on the CPU in float32.
CPU = ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.enable_progress_bar=false"]
# Variables of an enclosing launcher that would make Lightning pick another cluster environment.
LAUNCHER_VARS = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                 "GROUP_RANK", "NODE_RANK", "TORCHELASTIC_RUN_ID"}


def _job_id_with_free_port() -> str:
    """A job id whose port is free: Lightning's SLURMEnvironment listens on 15000 + the job id's
    last 4 digits (there is no MASTER_PORT on Slurm)."""
    for _ in range(100):
        port = random.randint(15000, 24999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"7{port - 15000:04d}"
    raise RuntimeError("no free port in 15000-24999")


def _sbatch(script: str, args: list[str], cwd: Path, *, ntasks_per_node: int = 1, **slurm: str) -> subprocess.Popen:
    """Start ``slurm/<script>`` as sbatch starts a batch script on 1 node with ``ntasks_per_node``
    tasks (``slurm`` adds or overrides SLURM_* variables); stand-ins first on PATH."""
    header = (SLURM / script).read_text()
    job_name = re.search(r"^#SBATCH --job-name=(\S+)", header, re.M).group(1)
    image = cwd / "debate_lightning.sif"
    if not image.exists():
        shutil.copy(DEFINITION, image)  # the singularity stand-in sources its %environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k not in LAUNCHER_VARS}
    env.update({
        "PATH": os.pathsep.join([str(STANDINS), str(Path(sys.executable).parent), env["PATH"]]),
        "IMAGE": str(image), "STANDIN_LOG": str(cwd / "standins.log"), "SLURM_LABELIO": "1",
        "DEBATE_LIGHTNING_CACHE": str(cache_root()),  # the host's value wins over the image's default
        "SLURM_JOB_ID": _job_id_with_free_port(), "SLURM_JOB_NAME": job_name, "SLURM_NNODES": "1",
        "SLURM_NTASKS": str(ntasks_per_node), "SLURM_NTASKS_PER_NODE": str(ntasks_per_node),
        "SLURM_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost", "SLURM_CPUS_PER_TASK": "1",
        "SLURM_SUBMIT_DIR": str(cwd), **slurm,
    })
    return subprocess.Popen(["bash", str(SLURM / script), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(job: subprocess.Popen, timeout: float = 600) -> str:
    try:
        output, _ = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGTERM)  # srun passes it on to its tasks
        output, _ = job.communicate()
        raise AssertionError(f"{job.args} still running after {timeout} s:\n{output[-4000:]}") from None
    assert job.returncode == 0, output[-4000:]
    return output


def test_the_srun_stand_in_fails_when_a_task_fails_and_ends_the_others():
    env = {**os.environ, "SLURM_NTASKS": "3", "SLURM_NNODES": "1", "SLURM_LABELIO": "1"}
    task = 'echo "$SLURM_PROCID/$SLURM_LOCALID/$SLURM_NODEID"; [ "$SLURM_PROCID" = 1 ] && exit 3; sleep 60'
    proc = subprocess.run([str(STANDINS / "srun"), "sh", "-c", task], env=env, capture_output=True, text=True,
                          timeout=30)  # the sleeping tasks were ended, not waited for
    assert proc.returncode == 3, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["0: 0/0/0", "1: 1/1/0", "2: 2/2/0"]
    assert "task 1 exited with status 3" in proc.stderr


def _run_on_two_tasks(script: str, config: str, cwd: Path, *flags: str) -> Path:
    """Run ``script CONFIG FLAGS`` on 1 node x 2 tasks, check the launch and the ranks; the run's
    log directory."""
    output = _finish(_sbatch(script, [config, *flags, *CPU, f"--trainer.default_root_dir={cwd / 'run'}"], cwd,
                             ntasks_per_node=2))
    # The launch went srun -> singularity exec --nv (the GPU path), one container per task.
    log = (cwd / "standins.log").read_text().splitlines()
    assert [line.split(" ", 3)[:3] for line in log if line.startswith("srun")] == [["srun", "singularity", "exec"]]
    assert sorted(line.split(" ", 3)[:3] for line in log if line.startswith("singularity")) == [
        ["singularity[0]", "exec", "--nv"], ["singularity[1]", "exec", "--nv"]]
    # Lightning chose SLURMEnvironment and took each task's rank from it: task i is rank i of 2.
    for rank in (0, 1):
        assert f"{rank}: SLURM auto-requeueing enabled" in output
        assert f"{rank}: Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in output
    runs = list((cwd / "run").glob("*/version_*"))
    assert len(runs) == 1, runs
    run = runs[0]
    fingerprints = json.loads((run / "replica_fingerprints.json").read_text())
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]  # 2 replicas, still identical
    return run


def _metric(run: Path, name: str) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def _dpo_flags(model: Path) -> list[str]:
    """2 steps of DPO (8 built-in pairs, 2 per rank per step) of the tiny model."""
    return [f"--model.init_args.policy.model={model}", "--model.init_args.policy.lora.r=4",
            "--model.init_args.optim.lr=1e-2", "--data.init_args.train=synthetic:8", "--data.init_args.batch_size=2",
            "--trainer.max_steps=2", "--trainer.callbacks=[]"]


@pytest.mark.multiprocess
def test_ddp_sbatch_trains_dpo_on_two_slurm_tasks(tiny_model_dir, tmp_path):
    run = _run_on_two_tasks("ddp.sbatch", "configs/dpo.yaml", tmp_path, *_dpo_flags(tiny_model_dir))
    config = (run / "config.yaml").read_text()
    # devices and num_nodes come from the allocation; the flags after the script's won
    for line in ("strategy: ddp", "devices: '2'", "num_nodes: 1", "accelerator: cpu", "precision: 32-true"):
        assert f"\n  {line}\n" in config, line
    assert len(_metric(run, "loss")) == 2  # 8 pairs, 2 per rank per step: 2 steps
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.multiprocess
def test_ddp_sbatch_trains_online_dpo_on_two_slurm_tasks(tiny_model_dir, tmp_path):
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                         "      init_args: {save_last: true}\n"
                         "    - class_path: debate_lightning.training.callbacks.JudgeEvaluation\n"
                         "      init_args: {questions: {split: val, limit: 1, both_orders: true}, at_start: false}\n")
    run = _run_on_two_tasks("ddp.sbatch", "configs/online_dpo.yaml", tmp_path, "--config", str(callbacks),
                            f"--model.init_args.policy.model={tiny_model_dir}",
                            f"--data.init_args.judge.path={tiny_model_dir}", "--data.init_args.rounds_per_epoch=2",
                            "--data.init_args.questions.limit=4", "--data.init_args.sampling.max_new_tokens=4",
                            "--trainer.max_epochs=1")
    # each task played its own shard of the epoch's rounds; the metrics count both
    played = [[json.loads(line)["round_id"] for line in (run / "rollouts" / f"epoch-0000-rank-{rank}.jsonl")
               .read_text().splitlines()] for rank in (0, 1)]
    assert len(played[0]) == len(played[1]) == 1 and played[0] != played[1]
    assert _metric(run, "rollout/rounds") == [2.0]
    assert _metric(run, "judge/rounds") == [2.0]  # the callback's 2 rounds, shared out and gathered
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.multiprocess
def test_fsdp_sbatch_trains_dpo_on_two_slurm_tasks(tiny_model_dir, tmp_path):
    run = _run_on_two_tasks("fsdp.sbatch", "configs/dpo.yaml", tmp_path, *_dpo_flags(tiny_model_dir))
    config = (run / "config.yaml").read_text()
    assert "class_path: debate_lightning.training.sharding.FSDPStrategy" in config  # strategies/fsdp.yaml merged
    assert "\n  devices: '2'\n" in config and "\n  num_nodes: 1\n" in config
    assert len(_metric(run, "loss")) == 2
    assert (run / "adapter" / "adapter_model.safetensors").is_file()  # gathered whole
    checkpoints = list((run / "checkpoints").glob("*.ckpt"))  # a directory of each task's shard
    assert len(checkpoints) == 1
    assert {p.name for p in checkpoints[0].glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}


def _round_ids(directory: Path) -> list[str]:
    return [json.loads(line)["round_id"] for line in (directory / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.multiprocess
def test_tournament_shards_sbatch_two_array_tasks_then_merge(tmp_path):
    import yaml

    from debate_lightning.tournament.cli import tournament_main

    config = tmp_path / "tournament.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"source": "synthetic", "limit": 3, "both_orders": True}, "models": {"r": {"backend": "random"}},
        "debaters": [{"name": "a", "model": "r"}, {"name": "b", "model": "r"}], "judge": {"model": "r"},
        "formats": [{"kind": "debate", "num_speeches": 1}, {"kind": "consultancy"}],
        "schedule": {"kind": "round_robin"}, "rounds_in_flight": 4}))
    assert tournament_main(["--config", str(config), "--output", str(tmp_path / "whole"), "--progress", "false",
                            "--report", "false"]) == 0
    whole = set(_round_ids(tmp_path / "whole"))

    out = tmp_path / "out"
    array = {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0",
             "SLURM_ARRAY_TASK_MAX": "1"}
    tasks = [_sbatch("tournament_shards.sbatch", [str(config), str(out)], tmp_path, SLURM_ARRAY_TASK_ID=str(i), **array)
             for i in (0, 1)]  # the two array tasks run at once
    for task in tasks:
        _finish(task)
    shards = [set(_round_ids(out / f"shard-{i}")) for i in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    log = (tmp_path / "standins.log").read_text()
    assert all(f"--shard {i}/2 --resume" in log for i in (0, 1)) and log.count("exec --nv") == 2

    # A requeued task resumes its shard: nothing is played twice.
    _finish(_sbatch("tournament_shards.sbatch", [str(config), str(out)], tmp_path, SLURM_ARRAY_TASK_ID="0", **array))
    assert len(_round_ids(out / "shard-0")) == len(shards[0])

    _finish(_sbatch("tournament_shards.sbatch", ["--merge", str(out)], tmp_path))
    merged = _round_ids(out / "all")
    assert len(merged) == len(set(merged)) and set(merged) == whole  # every round, once
    assert json.loads((out / "all" / "merge.json").read_text())["rounds"] == len(whole)
    assert (out / "all" / "report.md").is_file()


# --- Singularity.def and the constraints it installs with ------------------------------------

def _sections() -> dict[str, str]:
    sections, name = {}, None
    for line in DEFINITION.read_text().splitlines():
        if line.startswith("%"):
            name = line.split()[0][1:]
            sections[name] = ""
        elif name:
            sections[name] += line + "\n"
    return sections


def _commands(body: str) -> list[str]:
    """The section's shell commands, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", body)
    return [c.strip() for c in text.splitlines() if c.strip() and not c.strip().startswith("#")]


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, ver = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = ver
    return pins


def test_the_image_installs_the_tested_set_with_the_extras():
    sections = _sections()
    assert "constraints.txt /opt/debate_lightning/constraints.txt" in sections["files"]
    installs = [c for c in _commands(sections["post"]) if c.startswith("pip install")]
    assert installs and all(re.search(r'-c "?\$C"?', c) for c in installs), installs
    assert re.search(r"^\s*C=/opt/debate_lightning/constraints.txt$", sections["post"], re.M)
    assert installs[0].split()[-1] == "torch"  # torch first, before anything can pull another build
    package = [c for c in installs if "/opt/debate_lightning[" in c]
    assert len(package) == 1
    extras = set(re.search(r"/opt/debate_lightning\[([^\]]+)\]", package[0]).group(1).split(","))
    assert extras == {"quant", "wandb"}
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(declared), f"pyproject.toml declares no extra {extras - set(declared)}"


def test_the_images_environment_is_defaults_the_host_overrides():
    env = _sections()["environment"]
    for var, default in (("HF_HUB_OFFLINE", "1"), ("WANDB_MODE", "offline")):
        assert re.search(rf"^\s*export {var}=\${{{var}:-{default}}}$", env, re.M), var
    show = env + 'echo "$HF_HUB_OFFLINE $WANDB_MODE $TOKENIZERS_PARALLELISM"\n'
    clean = subprocess.run(["sh", "-eu", "-c", show], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert clean.stdout.split() == ["1", "offline", "false"], clean.stderr
    host = {"PATH": os.environ["PATH"], "HF_HUB_OFFLINE": "0", "WANDB_MODE": "online", "TOKENIZERS_PARALLELISM": "true"}
    assert subprocess.run(["sh", "-eu", "-c", show], env=host, capture_output=True, text=True).stdout.split() == [
        "0", "online", "true"]


def test_the_image_has_help_labels_and_a_test_that_fits(tmp_path):
    sections = _sections()
    assert "debate_lightning" in sections["help"] and len(sections["help"].split()) > 20
    labels = dict(line.split(None, 1) for line in sections["labels"].strip().splitlines())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["torch"] == _pins(CONSTRAINTS.read_text())["torch"]
    fits = [c for c in _commands(sections["test"]) if c.startswith("python -m debate_lightning fit ")]
    assert len(fits) == 1
    # The %test's fit parses (every flag exists, every value has its type): a typo would fail the
    # image build on the cluster. Parsed only; the fit of the embedded model takes ~1 min here.
    args = [a.replace("$out", str(tmp_path)) for a in shlex.split(fits[0])[4:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "debate_lightning", "fit", "--print_config", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max_steps: 1\n" in proc.stdout and f"default_root_dir: {tmp_path}\n" in proc.stdout


def _direct_dependencies() -> dict[str, bool]:
    """pyproject's requirements (base and every extra) -> whether the base requires it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for extra in project["optional-dependencies"].values():
        out |= {re.sub(r"[-_.]+", "-", Requirement(r).name).lower(): False for r in extra}
    out |= {re.sub(r"[-_.]+", "-", Requirement(r).name).lower(): True for r in project["dependencies"]}
    return out


def test_constraints_pin_the_tested_versions_of_every_direct_dependency(tmp_path):
    committed = _pins(CONSTRAINTS.read_text())
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.!]*", v) for v in committed.values()), committed  # no +cpu
    written = tmp_path / "constraints.txt"
    subprocess.run(["bash", str(ROOT / "scripts" / "write_constraints.sh"), sys.executable, str(written)],
                   check=True, capture_output=True)
    fresh = _pins(written.read_text())
    assert fresh["torch"] == version("torch").split("+")[0]
    stale = {}
    for name, required in _direct_dependencies().items():
        try:
            installed = version(name).split("+")[0]
        except PackageNotFoundError:
            assert not required, f"{name} is a dependency but not installed in this venv"
            continue  # an extra this venv was not set up with: pyproject's range bounds it
        if not committed.get(name) == fresh.get(name) == installed:
            stale[name] = (committed.get(name), installed)
    assert not stale, f"constraints.txt is not the tested set (pinned, installed): {stale}; run `make constraints`"
    make = subprocess.run(["make", "-n", "constraints"], cwd=ROOT, capture_output=True, text=True)
    assert "scripts/write_constraints.sh .venv/bin/python constraints.txt" in make.stdout
