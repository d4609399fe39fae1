"""Daily report: rank the images that arrived in a folder since the last run (preset "pipeline").

    python -m examples.daily_report "QUERY" FOLDER [--out-dir reports] [--since 2026-11-24T07:00 | --all]
                                    [--store FILE] [--model PATH] [--device auto] [--dtype auto]

(run from the repository root, so that ``lychee`` and ``examples`` are importable).

Writes ``report-YYYY-MM-DD.md`` and ``report-YYYY-MM-DD.json`` into ``--out-dir``: the top 3
new images scoring >= 7.0 (always three slots, an empty one marked "—"), the images that
failed and the files that were not images. "New" means modified at or after ``--since``;
without it, after the start of the previous run (kept in ``OUT_DIR/.last-run``); on the
first run, within the last 24 hours. A day without new images still gets a report (all
slots empty) and loads no model. ``--all`` ranks every image in the folder instead.

Every score is kept in a score store (``--store``, default ``$LYCHEE_STORE``, else
``OUT_DIR/scores.sqlite``): with ``--all`` only the images the store has not seen are scored
(a day that adds 50 images to 1,000 costs about 5 % of scoring them all, see
benchmarks/README.md), and a run that was killed part-way resumes where it stopped. Exit codes
as ``python -m lychee rank``: 0 ok, 2 usage, 3 model not loadable. A cron line, every morning at 7:

    0 7 * * * cd /srv/lychee && .venv/bin/python -m examples.daily_report "白底商品主图" /data/in --out-dir /data/out
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from lychee import cli
from lychee.limits import Limits
from lychee.presets import PRESETS
from lychee.report import Report
from lychee.settings import resolve_settings
from lychee.store import STORE_ENV_VAR, open_store

PRESET = PRESETS["pipeline"]
STATE_FILE = ".last-run"
STORE_FILE = "scores.sqlite"


def _since(args: argparse.Namespace, state: Path, now: datetime) -> datetime:
    if args.since:
        return datetime.fromisoformat(args.since)
    if state.exists():
        return datetime.fromisoformat(state.read_text(encoding="utf-8").strip())
    return now - timedelta(days=1)


def _new(paths: Sequence[str], since: datetime) -> list[str]:
    return [p for p in paths if os.stat(p).st_mtime >= since.timestamp()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("query")
    parser.add_argument("folder")
    parser.add_argument("--out-dir", default="reports")
    window = parser.add_mutually_exclusive_group()
    window.add_argument("--since", help="ISO date or time; default: the previous run")
    window.add_argument("--all", action="store_true", help="rank every image in the folder, not only the new ones")
    parser.add_argument("--store", default=os.environ.get(STORE_ENV_VAR) or None,
                        help=f"score store (default ${STORE_ENV_VAR}, else OUT_DIR/scores.sqlite)")
    parser.add_argument("--model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)

    from lychee.request import build_request

    now = datetime.now()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = out_dir / STATE_FILE
    try:
        limits = Limits.from_env()
        request = build_request(args.query, resolve_settings(PRESET.name), limits)
        since = _since(args, state, now)
        images, skipped = cli.collect_images([args.folder])
        if not args.all:
            images, skipped = _new(images, since), _new(skipped, since)
        reranker = None
        if images:  # a quiet day loads no model
            store = open_store(args.store or out_dir / STORE_FILE)
            reranker = cli.load_reranker(args.model, device=args.device, dtype=args.dtype, limits=limits, store=store)
    except (ValueError, cli.ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return cli.EXIT_MODEL if isinstance(exc, cli.ModelLoadError) else cli.EXIT_USAGE

    records = cli.score_in_chunks(reranker, request, images) if reranker else []
    report = Report.build(request, records, skipped=skipped, model=reranker.describe() if reranker else None)
    stem = out_dir / f"report-{now:%Y-%m-%d}"
    title = (f"Daily image report {now:%Y-%m-%d}: {args.folder}, "
             + ("all images" if args.all else f"new since {since:%Y-%m-%d %H:%M}"))
    cli.write_atomically(stem.with_suffix(".md"), cli.render_markdown(report, title=title))
    cli.write_atomically(stem.with_suffix(".json"), cli.render_json(
        report, folder=str(args.folder), since=None if args.all else since.isoformat(timespec="seconds"),
        generated_at=now.isoformat(timespec="seconds")))
    cli.write_atomically(state, now.isoformat() + "\n")
    print(f"{len(images)} {'' if args.all else 'new '}images ({report.scored} scored, {report.from_store} from the "
          f"store), {len(report.results)} in the top {PRESET.top_k}: {stem}.md, {stem}.json")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
