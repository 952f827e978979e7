"""The human-feedback loop as one command (issue 21 item 5, docs/preferences.md): two arms of the
base I2V, a side-by-side study rated through the HTTP API, its votes as preference pairs,
Diffusion-DPO on them, the tuned model exported and sampled.

    python -m mv2_jax.training.preference_loop --workdir runs/loop \\
        [--prompts FILE] [--seeds 2] [--arm-a "--i2v-steps 30"] [--arm-b "--i2v-steps 4"] \\
        [--criterion consistency] [--dpo-steps 400] [--rater judge | --rater ann]

Each step is one of the documented commands, run as its own process, in order:

1. `sample.py batch` twice (arm a, arm b: the base cascade's T2I + I2V, 64² keyframes, each
   with its own extra flags), on the same prompts and seeds;
2. `studies create` pairing them by (prompt, seed), one criterion;
3. `studies serve` + `studies invite` + `studies auto-rate --judge shapes` (with `--rater` not
   "judge", the loop stops after printing the invite link: a person rates in the browser, then
   the same command goes on from step 4);
4. `studies export` → votes.jsonl; 5. `data.build preferences --votes`;
6. `train.py --config configs/dpo.py:shapes_i2v` (a LoRA on the shipped I2V);
7. `training.export` (the LoRA alone, and the pipeline with it fused);
8. `sample.py` with the tuned I2V on the first prompt.

A step whose output exists is skipped, so a stopped loop goes on where it stopped.
"""

from __future__ import annotations

import argparse
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: train.py, sample.py, configs/


def _run(command: list[str], log: Path) -> None:
    shown = re.sub(r"token=[^&\s']+", "token=…", shlex.join(command))  # a secret: not in logs
    print("$ " + shown, file=sys.stderr, flush=True)
    with open(log, "a") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"preference loop: that step failed ({result.returncode}); see {log}")


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def make_arms(args, work: Path, log: Path) -> dict[str, Path]:
    arms = {}
    for name, extra in (("a", args.arm_a), ("b", args.arm_b)):
        out = work / "arms" / name
        arms[name] = out
        _run(_python("sample.py", "batch", "--prompts", str(args.prompts), "--seeds",
                     str(args.seeds), "--seed", str(args.seed), "--skip", "v2v", "--skip",
                     "vfi", "--out", str(out), *shlex.split(extra)), log)  # fmt: skip
    return arms


def rate(args, work: Path, arms: dict[str, Path], log: Path) -> bool:
    """Create the study and have it rated; False when a person has yet to rate it."""
    db, study = str(work / "study.db"), "loop"
    if not (work / "study.db").exists():
        _run(_python("-m", "mv2_jax.studies", "create", "--db", db, "--name", study,
                     "--arm", f"a={arms['a']}", "--arm", f"b={arms['b']}",
                     "--criteria", args.criterion), log)  # fmt: skip
    link = work / f"invite-{args.rater}.txt"
    if not link.exists():
        url = f"http://127.0.0.1:{args.port}"
        invite = _python("-m", "mv2_jax.studies", "invite", "--db", db, "--name", study,
                         "--rater", args.rater, "--url", url)  # fmt: skip
        link.write_text(subprocess.run(invite, capture_output=True, text=True, check=True,
                                       cwd=ROOT).stdout.strip())  # fmt: skip
    if args.rater != "judge":
        print(f"rate in the browser: run `python -m mv2_jax.studies serve --db {db} --port "
              f"{args.port}`, open {link.read_text()}, then rerun this command")  # fmt: skip
        return False
    serve = _python("-m", "mv2_jax.studies", "serve", "--db", db, "--port", str(args.port),
                    "--admin-token", "loop")  # fmt: skip
    with open(log, "a") as out:
        server = subprocess.Popen(serve, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            _wait_until_listening(args.port, server)
            _run(_python("-m", "mv2_jax.studies", "auto-rate", "--url", link.read_text(),
                         "--judge", "shapes"), log)  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
    return True


def _wait_until_listening(port: int, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"preference loop: the study server exited ({server.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"preference loop: the study server did not listen on {port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--prompts", type=Path, help="default: the world's 72 training prompts")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1000, help="the first seed of the arms")
    parser.add_argument("--arm-a", default="--i2v-steps 30", help="arm a's extra batch flags")
    parser.add_argument("--arm-b", default="--i2v-steps 4", help="arm b's extra batch flags")
    parser.add_argument("--criterion", default="consistency")
    parser.add_argument("--rater", default="judge", help='"judge" or a person\'s id')
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--dpo-steps", type=int, default=400)
    parser.add_argument("--dpo-batch", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=25, help="I2V steps of step 8")
    parser.add_argument("--dpo-flag", action="append", default=[], metavar="--config.K=V",
                        help="more train.py flags, e.g. --config.dpo.beta=2000")  # fmt: skip
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "loop.log"
    if args.prompts is None:
        from mv2_jax.evaluation.shapes import select_prompts

        args.prompts = work / "prompts.txt"
        args.prompts.write_text("\n".join(c.prompt for c in select_prompts("train")) + "\n")
    arms = make_arms(args, work, log)
    if not rate(args, work, arms, log):
        return 0
    votes, pairs = work / "votes.jsonl", work / "pairs"
    _run(_python("-m", "mv2_jax.studies", "export", "--db", str(work / "study.db"), "--name",
                 "loop", "--out", str(votes)), log)  # fmt: skip
    if not (pairs / "preference_pairs").exists():
        _run(_python("-m", "mv2_jax.data.build", "preferences", "--votes", str(votes),
                     "--criterion", args.criterion, "--data-dir", str(pairs)), log)  # fmt: skip
    dpo = work / "dpo"
    _run(_python("train.py", "--config", "configs/dpo.py:shapes_i2v", "--workdir", str(dpo),
                 f"--config.data.preference_dir={pairs}", f"--config.total_steps={args.dpo_steps}",
                 f"--config.batch_size={args.dpo_batch}", "--config.warmup_steps=0",
                 f"--config.checkpoint_every={max(1, min(100, args.dpo_steps))}",
                 *args.dpo_flag), log)  # fmt: skip
    for out, extra in ((work / "lora", ["--lora-only"]), (work / "tuned_i2v", [])):
        if not out.exists():
            _run(_python("-m", "mv2_jax.training.export", "--workdir", str(dpo), "--out",
                         str(out), *extra), log)  # fmt: skip
    prompt = args.prompts.read_text().splitlines()[0]
    video = work / "tuned.mp4"
    if not video.exists():
        from mv2_jax.pipelines.shipped import SHIPPED

        _run(_python("sample.py", prompt, "--t2i-model", str(SHIPPED["t2i"]),
                     "--i2v-model", str(work / "tuned_i2v"), "--skip",
                     "v2v", "--skip", "vfi", "--i2v-steps", str(args.sample_steps),
                     "--out", str(video)), log)  # fmt: skip
    print(f"preference loop: {work / 'lora'} (LoRA), {work / 'tuned_i2v'}, {video}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
