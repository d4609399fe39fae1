"""Command line for unattended use: rank the images in files and folders against a query.

    python -m lychee rank "QUERY" [PATH...] [--documents FILE.jsonl] [--query-image PATH] [--preset NAME]
                                          [--threshold X|none]
                                          [--top-k K|all] [--format md|json|csv] [--output FILE] [--strict]
                                          [--backend transformers|vllm|vllm-server] [--server-url URL]
                                          [--store FILE]

Folders are walked recursively in sorted order (hidden files and folders are left out);
files without an image extension are skipped and reported; a file with an image
extension that cannot be decoded is scored 0.0 and listed under errors. Images are
decoded lazily, --chunk-size at a time, so memory stays bounded on large folders.
--documents adds documents that carry text, one JSON object a line: {"image": "shoe.jpg",
"text": "Trail running shoe, red"}, either key optional (image paths relative to the file).

--store FILE (default $LYCHEE_STORE) keeps every score in a SQLite file as it is made: a
later run scores only what the store does not hold (the report's counts say how many were
``scored`` and how many came ``from_store``), and a run stopped part-way resumes there.

Exit codes: 0 ok; 1 --strict and at least one image failed; 2 usage error (bad
argument, path not found, no images, empty query without --query-image, unreadable query
image, bad LYCHEE_* variable, a --store file that is not a lychee score store);
3 the model could not be loaded, or no vLLM server answers (--backend vllm-server).

    python -m lychee calibrate LABELS.csv... [--target-precision P] [--format md|json] [--output FILE]
                                            [model and backend options as for rank]

finds the threshold that reaches a target precision on labelled images (see CALIBRATE_HELP).

    python -m lychee explain "QUERY" IMAGE [--query-image PATH] [--grid N|RxC] [--output MAP.png]
                                           [--format md|json] [model and backend options as for rank]

shows why IMAGE gets its score: an occlusion map (see :mod:`lychee.explain`), its report on
stdout and the overlay as a PNG in --output. Exit codes as for rank; 1: the model failed on a copy.

    python -m lychee vllm-serve MODEL [vLLM server options...]

starts a vLLM server configured for lychee-rerank-mm (see :mod:`lychee.backends.vllm_server`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from . import protocol
from .backends import BACKENDS, SERVER_URL_ENV_VAR, default_backend
from .calibration import DEFAULT_TARGET_PRECISION, Calibration, calibrate, check_target_precision, to_markdown
from .documents import DocumentsFileError, DocumentTexts, prepare_texts, read_documents, text_label
from .explain import check_grid, parse_grid
from .images import IMAGE_EXTENSIONS, ImageLoadError, is_image_path, load_image
from .labels import BadRow, LabelRow, LabelsFile, read_all
from .limits import Limits
from .messages import UserError, printable
from .presets import PRESETS
from .ranking import ScoredImage
from .report import EMPTY_SLOT, Report
from .request import Request, build_request, prepare_query
from .settings import (
    DEFAULT_MAX_SIDE,
    DEFAULT_TIE_EPSILON,
    UNSET,
    check_threshold,
    check_tie_epsilon,
    check_top_k,
    resolve_settings,
)
from .store import STORE_ENV_VAR, ScoreStore, open_store

CALIBRATE_HELP = """\
Precision, recall and F1 of "score >= t" on images labelled relevant or not, and the lowest
threshold that reaches --target-precision (the most relevant images kept at that precision).

LABELS.csv has a "relevant" column (1/0, yes/no, true/false or 是/否; empty = not labelled) and
either a "score" column (no model is loaded: e.g. a report CSV from `rank --format csv` or the
web page, with a "relevant" column added by hand) or "query" and "image" columns, and
optionally "query_image", to score (paths relative to the CSV's folder; same protocol and
pixel budget as rank). Several files are pooled; a file without a "query" column is one query.
Rows that cannot be used are listed with their line numbers and the rest are used.

Exit codes: 0 ok; 2 usage error (no such file, missing columns, no usable row); 3 the model
could not be loaded."""

if TYPE_CHECKING:
    from .explain import Explanation
    from .reranker import LycheeReranker

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_IMAGES_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3

DEFAULT_CHUNK_SIZE = 32
FORMATS = ("md", "json", "csv")
EXPLAIN_FORMATS = ("md", "json")


class UsageError(ValueError):
    """A problem with the command line or its inputs, found before any scoring."""

    exit_code = EXIT_USAGE


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to do."""

    exit_code = EXIT_MODEL


# --- finding the images -------------------------------------------------------------------

def _unreadable(error: OSError) -> None:
    log.warning("skipped %s: %s", printable(error.filename), error.strerror)


def _walk(folder: Path) -> Iterator[Path]:
    """Every non-hidden file under ``folder``, depth first, sorted by name at each level;
    folders that cannot be listed are reported and skipped."""
    for root, dirs, files in os.walk(folder, onerror=_unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield from (Path(root, name) for name in sorted(files) if not name.startswith("."))


def collect_images(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """``(images, skipped)``: image files in the order given (folders walked), and the
    files left out because their extension is not an image one.

    Raises :class:`UsageError` for a path that does not exist.
    """
    images: list[str] = []
    skipped: list[str] = []
    for given in map(Path, paths):
        if not given.exists():
            raise UsageError(f"no such file or folder: {str(given)!r}")
        for path in _walk(given) if given.is_dir() else [given]:
            (images if is_image_path(path) else skipped).append(str(path))
    return images, skipped


# --- scoring ------------------------------------------------------------------------------

def score_in_chunks(reranker: LycheeReranker, request: Request, paths: Sequence[str | None], *,
                    texts: DocumentTexts | None = None, chunk_size: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> list[ScoredImage]:
    """Score ``paths`` for ``request`` ``chunk_size`` at a time (at most that many decoded images
    in memory; default ``DEFAULT_CHUNK_SIZE`` or ``LYCHEE_MAX_IMAGES``, the smaller); records come
    back in input order with their position in ``paths`` as ``index``. With ``texts`` the
    candidates are documents: ``paths[i]`` (None: no image) with ``texts.texts[i]``."""
    chunk_size = chunk_size or min(DEFAULT_CHUNK_SIZE, reranker.limits.max_images)
    labels = [path or (text_label(texts.texts[i]) if texts and texts.texts[i] else f"document {i + 1}")
              for i, path in enumerate(paths)]
    records: list[ScoredImage] = []
    for start in range(0, len(paths), chunk_size):
        end = start + chunk_size
        chunk_progress = None if progress is None else (
            lambda done, _, start=start: progress(start + done, len(paths)))
        chunk_texts = None if texts is None else DocumentTexts(texts.texts[start:end])
        records += reranker.score_request(request, paths[start:end], texts=chunk_texts, labels=labels[start:end],
                                          start=start, progress=chunk_progress)
    return records


# --- the report ---------------------------------------------------------------------------

def _slots(report: dict[str, Any]) -> list[dict[str, Any] | None]:
    """The results, padded with ``None`` up to ``slots`` for fixed-length reports."""
    results = report["results"]
    return results + [None] * max(0, (report["slots"] or 0) - len(results))


def render_json(report: Report, **extra: Any) -> str:
    """The report's JSON form, with ``extra`` top-level fields (the daily report's folder and dates)."""
    return json.dumps({**report.to_dict(), **extra}, ensure_ascii=False, indent=2) + "\n"


def render_csv(report: Report) -> str:
    return report.to_csv()


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _settings_line(report: dict[str, Any]) -> str:
    settings, counts = report["settings"], report["counts"]
    threshold, top_k = settings["score_threshold"], settings["top_k"]
    parts = [f"preset `{report['preset']}`"] if report["preset"] else []
    parts.append("no threshold" if threshold is None else f"threshold {threshold:g}")
    parts.append("all results" if top_k is None else f"top {top_k}")
    if settings["normalize"]:
        parts.append("normalised")
    parts.append(f"{counts['images']} images, {counts['errors']} failed, {counts['skipped']} files skipped")
    return " · ".join(parts)


def render_markdown(report: Report, *, title: str = "Image ranking") -> str:
    """A short human report: the ranked table, failures and skipped files; filtered-out
    images are only counted (the JSON and CSV formats list every score)."""
    data = report.to_dict()
    lines = [f"# {title}", "", f"**Query:** {_cell(data['query'])}", "", _settings_line(data), "",
             "| rank | image | score | raw score |", "|---:|---|---:|---:|"]
    for rank, result in enumerate(_slots(data), start=1):
        if result is None:
            lines.append(f"| {rank} | {EMPTY_SLOT} | | |")
        else:
            mark = "≈ " if result["tied"] else ""
            lines.append(f"| {rank} | {_cell(result['source'])} | {mark}{result['score']:.2f} "
                         f"| {result['raw_score']:.2f} |")
    if not data["results"] and not data["slots"]:
        lines.append(f"| {EMPTY_SLOT} | no image passed | | |")
    if data["filtered_out"]:
        lines += ["", f"{len(data['filtered_out'])} more images scored below the threshold or beyond top_k."]
    if data["errors"]:
        lines += ["", f"## Failed ({len(data['errors'])})", "", "| image | error |", "|---|---|"]
        lines += [f"| {_cell(e['source'])} | {_cell(e['error'])} |" for e in data["errors"]]
    if data["skipped"]:
        lines += ["", f"## Skipped, not image files ({len(data['skipped'])})", ""]
        lines += [f"- {_cell(path)}" for path in data["skipped"]]
    return "\n".join(lines) + "\n"


def render_explanation(explanation: Explanation, fmt: str) -> str:
    """An explanation as JSON (``Explanation.to_dict``) or as a short markdown report: the score,
    the grid and its cost, and the three cells that carry the match most and that count most against it."""
    data = explanation.to_dict()
    if fmt == "json":
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    rows, cols = data["grid"]
    width, height = data["image_size"]
    lines = ["# Why this score?", "", f"**Query:** {_cell(data['query'] or '-')}  "]
    if data["query_image"]:
        lines.append(f"**Query image:** {_cell(data['query_image'])}  ")
    lines += [f"**Image:** {_cell(data['source'])} · **score {data['score']:.2f}**", "",
              f"Occlusion over {rows} x {cols} cells of the {width} x {height} px image as scored, each blurred "
              f"over in turn (Gaussian, radius {data['blur_radius']} px): {data['forward_passes']} forward passes "
              f"in {data['elapsed_s']:.1f} s. delta = score - score with the cell covered."]
    for title, cells in (("Carry the match", explanation.supporting()), ("Count against it", explanation.opposing())):
        lines += ["", f"## {title}", ""]
        if not cells:
            lines.append("No cell.")
            continue
        lines += ["| covering | box (px) | score covered | delta |", "|---|---|---:|---:|"]
        lines += [f"| {explanation.describe(c, 'en')} | {', '.join(map(str, c.box))} | {c.masked_score:.3f} "
                  f"| {c.delta:+.3f} |" for c in cells]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[Report], str]] = {
    "md": render_markdown, "json": render_json, "csv": render_csv,
}


def check_output(path: str | os.PathLike) -> None:
    """Raise :class:`UsageError` when ``path`` cannot take a report: a folder, or in a missing folder."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: it is a folder; give a file name")
    if not target.resolve().parent.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: no such folder {str(target.parent)!r}")


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` by way of a temporary file, so a reader never sees half a report.

    A symlink is written through (the file it points to is replaced, the link stays); a device
    or pipe (``/dev/stdout``) is written to directly. No temporary file is ever left behind;
    a failure is a :class:`UsageError` naming the path."""
    target = Path(os.path.realpath(path))  # through symlinks
    try:
        if target.exists() and not target.is_file():
            if target.is_dir():
                raise UsageError(f"cannot write {str(path)!r}: it is a folder; give a file name")
            with open(target, "w", encoding="utf-8") as stream:
                stream.write(text)
            return
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as tmp:
                tmp.write(text)
            if target.exists():
                os.chmod(temporary, target.stat().st_mode & 0o7777)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise UsageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


# --- the command line ---------------------------------------------------------------------

def _checked(parse: Callable[[str], Any], check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse ``type``: ``parse`` the text, then apply the settings validator ``check``."""
    def convert(text: str) -> Any:
        try:
            return check(parse(text))
        except ValueError as exc:
            message = str(exc) if isinstance(exc, UserError) else f"not a number: {text!r}"
            raise argparse.ArgumentTypeError(message) from None
    return convert


def _number_or(word: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``word`` (``none``, ``all``) means None; anything else is parsed as a number."""
    return lambda text: None if text.lower() == word else parse(text)


def _whole(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


_threshold = _checked(_number_or("none", float), check_threshold)
_top_k = _checked(_number_or("all", _whole), check_top_k)
_tie_epsilon = _checked(float, check_tie_epsilon)
_target_precision = _checked(float, check_target_precision)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _add_scoring_options(command: argparse.ArgumentParser) -> None:
    """The model, backend and pixel-budget options: the same for every command that scores images."""
    add = command.add_argument
    add("--instruction", help="task instruction for the model (default: the protocol's for the kind of query)")
    add("--model", help="hub id or local checkpoint (default: $LYCHEE_MODEL or vec-ai/lychee-rerank-mm)")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    add("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    add("--min-pixels", type=_positive_int, default=protocol.MIN_PIXELS, metavar="N",
        help=f"pixel budget of each image, lower bound (default {protocol.MIN_PIXELS} = 4 x 28 x 28)")
    add("--max-pixels", type=_positive_int, default=protocol.MAX_PIXELS, metavar="N",
        help=f"pixel budget of each image, upper bound (default {protocol.MAX_PIXELS} = 1280 visual tokens x 28 x "
             "28, the model card's); fewer is faster")
    add("--batch-size", type=_positive_int, metavar="N",
        help="pairs per forward pass at most (default: packed by tokens, at most 32)")
    add("--chunk-size", type=_positive_int, metavar="N",
        help=f"images decoded at a time, at most LYCHEE_MAX_IMAGES (default {DEFAULT_CHUNK_SIZE}; bounds memory)")
    add("--backend", choices=list(BACKENDS), default=default_backend(),
        help="scoring engine (default: $LYCHEE_BACKEND or transformers)")
    add("--server-url", metavar="URL",
        help=f"the vLLM server of --backend vllm-server (default: ${SERVER_URL_ENV_VAR} or http://127.0.0.1:8000)")


def _add_store_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--store", metavar="FILE", default=os.environ.get(STORE_ENV_VAR) or None,
                         help=f"score store (a SQLite file, created if missing; default ${STORE_ENV_VAR}): pairs "
                              "scored by an earlier run are not scored again, and each score is kept as it is "
                              "made, so a run stopped part-way resumes where it stopped")


def _grid(text: str) -> int | tuple[int, int]:
    """``N`` or ``RxC``: the form is checked here, the bounds against the image later."""
    try:
        grid = parse_grid(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if grid is None:
        raise argparse.ArgumentTypeError("give N or RxC")
    return grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lychee", description="Rerank images with lychee-rerank-mm.")
    commands = parser.add_subparsers(dest="command", required=True)
    rank = commands.add_parser(
        "rank", help="rank image files and folders against a query",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    rank.add_argument("query", help='what the image should show (Chinese, English or mixed); may be "" with '
                                    "--query-image")
    rank.add_argument("paths", nargs="*", metavar="PATH", help="image files and folders (walked recursively)")
    rank.add_argument("--documents", metavar="FILE.jsonl",
                      help='documents that carry text, one a line: {"image": PATH, "text": "..."}, either optional')
    rank.add_argument("--preset", choices=list(PRESETS), help="defaults for threshold and top-k")
    rank.add_argument("--threshold", type=_threshold, default=UNSET, metavar="X",
                      help="keep scores >= X (0-10), or 'none' (default: the preset's, else none)")
    rank.add_argument("--top-k", type=_top_k, default=UNSET, metavar="K",
                      help="keep the best K, or 'all' (default: the preset's, else all)")
    rank.add_argument("--format", choices=FORMATS,
                      help="report format (default: from the --output suffix, else md)")
    rank.add_argument("--output", "-o", metavar="FILE", help="write the report here (default: stdout)")
    rank.add_argument("--strict", action="store_true", help="exit 1 when any image failed")
    rank.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no notices on stderr")
    rank.add_argument("--query-image", metavar="PATH",
                      help="a reference image: rank the images by how well they match it (and the query text)")
    rank.add_argument("--normalize", action="store_true", help="min-max normalise scores over the run")
    rank.add_argument("--tie-epsilon", type=_tie_epsilon, default=DEFAULT_TIE_EPSILON, metavar="E",
                      help="scores closer than E to the best of their group are ties "
                           f"(default {DEFAULT_TIE_EPSILON:g})")
    _add_scoring_options(rank)
    _add_store_option(rank)
    calibrate = commands.add_parser(
        "calibrate", help="find the threshold that reaches a target precision on labelled images",
        description=CALIBRATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    calibrate.add_argument("labels", nargs="+", metavar="LABELS.csv",
                           help="labelled images (several files are pooled)")
    calibrate.add_argument("--target-precision", type=_target_precision, default=DEFAULT_TARGET_PRECISION,
                           metavar="P", help=f"precision the threshold must reach, above 0 and at most 1 "
                                             f"(default {DEFAULT_TARGET_PRECISION})")
    calibrate.add_argument("--format", choices=("md", "json"),
                           help="report format (default: from the --output suffix, else md)")
    calibrate.add_argument("--output", "-o", metavar="FILE", help="write the report here (default: stdout)")
    calibrate.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no notices on stderr")
    _add_scoring_options(calibrate)
    _add_store_option(calibrate)
    explain = commands.add_parser(
        "explain", help="show why an image gets its score: an occlusion map",
        description="Score copies of IMAGE with each cell of a grid blurred over; a cell's delta is how much of "
                    "the score it carries (negative: it argues against the match). Report on stdout, the "
                    "overlay in --output.")
    explain.add_argument("query", help='what the image should show; may be "" with --query-image')
    explain.add_argument("image", metavar="IMAGE", help="the image to explain")
    explain.add_argument("--query-image", metavar="PATH", help="a reference image, as for rank")
    explain.add_argument("--grid", type=_grid, metavar="N|RxC",
                         help="N x N cells, or R rows x C columns (default: 16-36 cells, as square as the "
                              "28-px patches allow); cost: cells + 1 forward passes")
    explain.add_argument("--output", "-o", metavar="MAP.png", help="write the overlay (a PNG) here")
    explain.add_argument("--format", choices=EXPLAIN_FORMATS, default="md", help="report on stdout (default md)")
    explain.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no notices on stderr")
    _add_scoring_options(explain)
    serve = commands.add_parser(
        "vllm-serve", help="start a vLLM server configured for lychee-rerank-mm",
        description="Run vLLM's OpenAI-compatible server with every flag lychee-rerank-mm needs (pooling runner, "
                    "the yes/no head, the score template, the model card's pixel budget); every other option "
                    "(--port, --host, --dtype, --data-parallel-size, --tensor-parallel-size, ...) is passed through.")
    serve.add_argument("model", help="hub id or local checkpoint directory")
    serve.add_argument("vllm_args", nargs=argparse.REMAINDER, metavar="...", help="options for vLLM's server")
    return parser


def load_reranker(model: str | None, *, device: str = "auto", dtype: str = "auto", batch_size: int | None = None,
                  limits: Limits | None = None, min_pixels: int = protocol.MIN_PIXELS,
                  max_pixels: int = protocol.MAX_PIXELS, backend: str = "transformers",
                  server_url: str | None = None, store: ScoreStore | None = None) -> LycheeReranker:
    """The reranker, or :class:`ModelLoadError` saying what to do when it cannot be loaded."""
    from .backends.vllm_server import ServerUnavailable
    from .reranker import LycheeReranker, default_model

    try:
        return LycheeReranker(model, device=device, dtype=dtype, batch_size=batch_size, limits=limits,
                              min_pixels=min_pixels, max_pixels=max_pixels, backend=backend, server_url=server_url,
                              store=store)
    except ServerUnavailable as exc:
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - hub, disk, device and format errors all end the same way
        raise ModelLoadError(f"could not load the model {model or default_model()!r}: {exc}\n"
                             "Point --model or LYCHEE_MODEL at a local checkpoint directory, or check "
                             "--device/--dtype.") from exc


class _TqdmHandler(logging.Handler):
    """Log records to stderr without tearing the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


@contextmanager
def _console(quiet: bool) -> Iterator[None]:
    """Route the library's warnings (per-image failures, query truncation) to stderr."""
    logger = logging.getLogger("lychee")
    handler = logging.NullHandler() if quiet else _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = Path(args.output).suffix.lower().lstrip(".") if args.output else ""
    return suffix if suffix in FORMATS else "md"


def _check_scoring_options(args: argparse.Namespace, limits: Limits) -> None:
    if args.min_pixels > args.max_pixels:
        raise UsageError(f"--min-pixels {args.min_pixels} is above --max-pixels {args.max_pixels}")
    if args.chunk_size and args.chunk_size > limits.max_images:
        raise UsageError(f"--chunk-size {args.chunk_size} is above the limit of {limits.max_images} "
                         "images per request (LYCHEE_MAX_IMAGES)")
    if args.output:
        check_output(args.output)


def _load_reranker(args: argparse.Namespace, limits: Limits, store: ScoreStore | None = None) -> LycheeReranker:
    return load_reranker(args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                         limits=limits, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                         backend=args.backend, server_url=args.server_url, store=store)


def _closing(store: ScoreStore | None) -> AbstractContextManager[object]:
    """Closes the store after the run, so its file holds every score (the write-ahead log folded in)."""
    return nullcontext() if store is None else closing(store)


def _emit(args: argparse.Namespace, text: str) -> None:
    # A file name that is not UTF-8 reaches Python as lone surrogates: written as escapes, not a crash.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if args.output:
        write_atomically(args.output, text)
    else:
        sys.stdout.write(text)


def _rank(args: argparse.Namespace) -> int:
    try:
        limits = Limits.from_env()
        settings = resolve_settings(args.preset, score_threshold=args.threshold, top_k=args.top_k,
                                    normalize=args.normalize, tie_epsilon=args.tie_epsilon)
        request = build_request(args.query, settings, limits, instruction=args.instruction, image=args.query_image)
        _check_scoring_options(args, limits)
        if not args.paths and not args.documents:
            raise UsageError("give image files or folders, --documents FILE.jsonl, or both")
        paths, skipped = collect_images(args.paths)
        document_images, document_texts = read_documents(args.documents) if args.documents else ([], [])
        texts = prepare_texts([None] * len(paths) + document_texts, limits) if args.documents else None
        store = open_store(args.store)
    except (ValueError, DocumentsFileError) as exc:
        raise UsageError(str(exc)) from None
    for notice in request.notices + (texts.notices if texts else ()):
        log.warning("%s", notice.text("en"))
    for path in skipped:
        log.warning("skipped %s: not an image file", printable(path))
    if not paths and args.paths and not args.documents:
        raise UsageError(f"no image files found in {', '.join(args.paths)} "
                         f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    candidates = [*paths, *document_images]
    if not candidates:
        raise UsageError(f"no documents in {args.documents}")

    reranker = _load_reranker(args, limits, store)
    started = time.perf_counter()
    with _closing(store), tqdm(total=len(paths), unit="img", desc="scoring", file=sys.stderr,
                               disable=args.quiet) as bar:
        try:
            records = score_in_chunks(reranker, request, candidates, texts=texts, chunk_size=args.chunk_size,
                                      progress=lambda done, _: bar.update(done - bar.n))
        except UserError as exc:  # the whole run failed, e.g. the vLLM server went away
            raise ModelLoadError(str(exc)) from exc
    report = Report.build(request, records, model=reranker.describe(), skipped=skipped,
                          elapsed_s=time.perf_counter() - started, notices=texts.notices if texts else ())
    _emit(args, RENDERERS[_output_format(args)](report))
    if not args.quiet:
        print(f"{report.images} images in {report.elapsed_s:.1f} s ({report.images_per_s:.2f}/s): "
              f"{len(report.results)} ranked, {len(report.filtered_out)} filtered out, {len(report.errors)} failed, "
              f"{len(skipped)} skipped" + (f"; {report.scored} scored, {report.from_store} from the store"
                                            if store else ""), file=sys.stderr)
    return EXIT_IMAGES_FAILED if args.strict and report.errors else EXIT_OK


CALIBRATION_SETTINGS = resolve_settings(None)  # every image kept, the default pixel budget, as for rank


def score_label_rows(reranker: LycheeReranker, rows: Sequence[LabelRow], *, instruction: str | None = None,
                     chunk_size: int | None = None, progress: Callable[[int], None] | None = None
                     ) -> tuple[list[LabelRow], list[BadRow]]:
    """``(scored, bad)``: ``rows`` scored by the protocol and pixel budget of ``rank``, one
    request per query (and query image); an image that fails is a bad row. ``progress(n)``
    is told how many rows are done."""
    by_query: dict[tuple[str, str | None], list[LabelRow]] = {}
    for row in rows:
        by_query.setdefault((row.query, row.query_image), []).append(row)
    scored: list[LabelRow] = []
    bad: list[BadRow] = []
    for (query, query_image), members in by_query.items():
        finished = len(scored) + len(bad)
        try:
            request = build_request(query, CALIBRATION_SETTINGS, reranker.limits, instruction=instruction,
                                    image=query_image)
        except UserError as exc:
            bad += [BadRow(r.file, r.line, str(exc)) for r in members]
            continue
        records = score_in_chunks(reranker, request, [r.image for r in members], chunk_size=chunk_size,
                                  progress=None if progress is None else (
                                      lambda done, _, finished=finished: progress(finished + done)))
        for row, record in zip(members, records):
            if record.error is None:
                scored.append(replace(row, score=record.raw_score))
            else:
                bad.append(BadRow(row.file, row.line, record.error))
    return scored, bad


def render_calibration(result: Calibration, labels: LabelsFile, fmt: str) -> str:
    """The calibration report with the rows left out: ``json`` (the calibration's JSON plus
    ``bad_rows`` and ``unlabelled``) or ``md``."""
    if fmt == "json":
        data = {**result.to_dict(), "bad_rows": [b.to_dict() for b in labels.bad_rows],
                "unlabelled": labels.unlabelled}
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    lines = [to_markdown(result)]
    if labels.unlabelled:
        lines.append(f"{labels.unlabelled} rows without a label were left out.\n")
    if labels.bad_rows:
        lines += [f"## Rows not used ({len(labels.bad_rows)})", "", "| file | line | reason |", "|---|---:|---|"]
        lines += [f"| {_cell(b.file)} | {b.line} | {_cell(b.reason)} |" for b in labels.bad_rows]
        lines[-1] += "\n"
    return "\n".join(lines)


def _calibrate(args: argparse.Namespace) -> int:
    try:
        limits = Limits.from_env()
        _check_scoring_options(args, limits)
        labels = read_all(args.labels)
        store = open_store(args.store)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    rows, bad = [r for r in labels.rows if r.score is not None], list(labels.bad_rows)
    unscored = [r for r in labels.rows if r.score is None]
    if unscored:
        reranker = _load_reranker(args, limits, store)
        with _closing(store), tqdm(total=len(unscored), unit="img", desc="scoring", file=sys.stderr,
                                   disable=args.quiet) as bar:
            try:
                scored, failed = score_label_rows(reranker, unscored, instruction=args.instruction,
                                                  chunk_size=args.chunk_size,
                                                  progress=lambda done: bar.update(done - bar.n))
            except UserError as exc:  # the whole run failed, e.g. the vLLM server went away
                raise ModelLoadError(str(exc)) from exc
        rows, bad = rows + scored, bad + failed
    labels = replace(labels, rows=rows, bad_rows=sorted(bad, key=lambda b: (b.file, b.line)))
    for row in labels.bad_rows:
        log.warning("%s line %d: %s", printable(row.file), row.line, printable(row.reason))
    if not rows:
        raise UsageError(f"no usable labelled rows in {', '.join(args.labels)}")
    result = calibrate([r.score for r in rows], [r.relevant for r in rows], target_precision=args.target_precision,
                       queries=[r.query_group for r in rows])
    fmt = args.format or ("json" if args.output and Path(args.output).suffix.lower() == ".json" else "md")
    _emit(args, render_calibration(result, labels, fmt))
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    """Everything that can be checked - text, images, grid, output folder - is, before the model loads."""
    try:
        limits = Limits.from_env()
        query = prepare_query(args.query, instruction=args.instruction, image=args.query_image,
                              image_label=args.query_image and Path(args.query_image).name,
                              max_side=DEFAULT_MAX_SIDE, limits=limits)
        _check_scoring_options(args, limits)
        try:
            image = load_image(args.image, limits=limits, budget=(args.min_pixels, args.max_pixels))
        except ImageLoadError as exc:
            raise UserError("bad_image", reason=str(exc)) from None
        check_grid(args.grid, image.size)  # the image as it will be scored
        if args.output and Path(args.output).suffix.lower() != ".png":
            raise UsageError(f"--output {args.output!r}: the overlay is a PNG; give a file name ending in .png")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for notice in query.notices:
        log.warning("%s", notice.text("en"))
    reranker = _load_reranker(args, limits)
    with tqdm(unit="copy", desc="explaining", file=sys.stderr, disable=args.quiet) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            explanation = reranker.explain_query(query, image, grid=args.grid, label=Path(args.image).name,
                                                 progress=progress)
        except UserError as exc:
            if exc.key != "explain_failed":  # the whole run failed, e.g. the vLLM server went away
                raise ModelLoadError(str(exc)) from exc
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_IMAGES_FAILED
    if args.output:
        explanation.overlay().save(args.output, format="PNG")
    sys.stdout.write(render_explanation(explanation, args.format))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    """Replace this process with vLLM's server (it never returns when the server starts)."""
    from .backends.vllm_server import serve_command

    command = serve_command(args.model, args.vllm_args)
    log.info("starting: %s", " ".join(command))
    os.execv(command[0], command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return int(exit_.code or 0)
    if args.command == "vllm-serve":
        return _serve(args)
    with _console(args.quiet):
        try:
            return {"calibrate": _calibrate, "explain": _explain}.get(args.command, _rank)(args)
        except (UsageError, ModelLoadError) as exc:
            print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
            return exc.exit_code
