"""Measuring what the cascade makes: `shapes` scores generated shapes-world videos from their
pixels (prompt selection, per-sample scores, frame-interpolation PSNR, summaries); `results`
keeps an evaluation's records (resumable JSONL) and writes results.json / results.md; `run`
drives a cascade over prompts × seeds. The command line is `evaluate.py`."""
