"""Rerank local images through a running demo's ``/rerank`` API and print the ranking.

    python examples/api_client.py --url http://127.0.0.1:7860 "一只black cat坐在red sofa上" a.jpg b.jpg
    python examples/api_client.py --preset precise --json "a rocket at night" examples/images/*.jpg
    python examples/api_client.py --query-image examples/images/coffee.jpg "" examples/images/*.jpg

Works against a local ``python app.py`` or a Hugging Face Space URL/id; needs only
``pip install gradio_client``.
"""

from __future__ import annotations

import argparse
import json
import sys

from gradio_client import Client, handle_file


def print_table(data: dict) -> None:
    """The ranked images, then what was filtered out and why, then the failures."""
    print(f"{'rank':<6}{'score':>7}  image")
    for r in data["results"]:
        score = f"{'≈' if r['tied'] else ''}{r['score']:.2f}"
        print(f"#{r['rank']:<5}{score:>7}  {r['source']}")
    if data["filtered_out"]:
        print(f"filtered out ({len(data['filtered_out'])}):")
        for r in data["filtered_out"]:
            print(f"#{r['rank']:<5}{r['score']:>7.2f}  {r['source']}  ({r['reason']})")
    if data["errors"]:
        print(f"errors ({len(data['errors'])}):")
        for r in data["errors"]:
            print(f"#{r['rank']:<5}{'-':>7}  {r['source']}: {r['error']}")
    model = data["model"]
    if data["query_image"]:
        print(f"query: {data['query_kind']} ({data['query_image']}{' + text' if data['query'] else ''})")
    print(f"{data['counts']['images']} images in {data['elapsed_s']:.2f} s ({data['images_per_s']:.1f} images/s) "
          f"on {model['device']} ({model['dtype']}), winner: {data['winner_strength']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query", help='what the image should show (Chinese, English or both); "" with --query-image')
    parser.add_argument("images", nargs="+", help="image files to rank")
    parser.add_argument("--url", default="http://127.0.0.1:7860", help="demo URL or Space id (owner/name)")
    parser.add_argument("--preset", default="", help="screening | precise | mixed_language | pipeline")
    parser.add_argument("--threshold", type=float, help="keep images scoring at least this (0-10)")
    parser.add_argument("--top-k", type=int, help="keep at most this many images")
    parser.add_argument("--query-image", help="a reference image: rank by how well each image matches it")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result instead of a table")
    args = parser.parse_args(argv)

    client = Client(args.url, verbose=False)
    # /rerank takes its ten arguments by position: query, images, preset, score_threshold, top_k,
    # instruction, normalize, tie_epsilon, max_side, query_image.
    images = [handle_file(path) for path in args.images]
    reference = handle_file(args.query_image) if args.query_image else None
    data = client.predict(args.query, images, args.preset, args.threshold, args.top_k, "", False, 0.05, 1920,
                          reference, api_name="/rerank")
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print_table(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
