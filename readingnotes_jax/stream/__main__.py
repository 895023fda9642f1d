"""Command line: `python -m readingnotes_jax.stream --source SRC [options]`.

Examples:
  python -m readingnotes_jax.stream --source ../shared/data/mot15/PETS09-S2L1/vtest.avi --loop
  python -m readingnotes_jax.stream --source pets=vtest.avi --source cam=0 \
      --model pspnet --checkpoint runs/pspnet_camvid
  python -m readingnotes_jax.stream --model progan --checkpoint runs/progan_fashion
  python -m readingnotes_jax.stream --source cam=0 --model fashiongan \
      --checkpoint runs/ccp_fashiongan --segmenter runs/ccp_pspnet50   # type a sentence
Then open the printed address in a browser.
"""
import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from readingnotes_jax import errors
from readingnotes_jax.errors import UserError
from readingnotes_jax.stream import processors as processors_lib
from readingnotes_jax.stream import sources as sources_lib
from readingnotes_jax.stream import server as server_lib


def _parser() -> argparse.ArgumentParser:
  parser = errors.ArgumentParser(
      prog="python -m readingnotes_jax.stream",
      description="Stream video, or a model's view of it, to the browser over WebSocket.")
  parser.add_argument(
      "--source", action="append", default=[], metavar="[NAME=]SRC",
      help="a video file, a folder of images or a camera index; repeat to offer several")
  parser.add_argument(
      "--model", action="append", default=[], metavar="NAME",
      help=f"a model to offer: processors {processors_lib.names()}, generators (sources) "
      f"{sorted(sources_lib.GENERATORS)}; repeat, each with its --checkpoint")
  parser.add_argument("--checkpoint", action="append", default=[], metavar="DIR",
                      help="the training workdir of the --model at the same position")
  parser.add_argument("--segmenter", default=None, metavar="DIR",
                      help="--model fashiongan: a PSPNet workdir trained on CCP, which finds "
                      "the person's segmentation in each frame")
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: this machine only)")
  parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
  parser.add_argument("--fps", type=float, default=None,
                      help="frame rate (default: the source's own rate)")
  parser.add_argument("--loop", action="store_true", help="restart a source that ends")
  parser.add_argument("--quality", type=int, default=80, help="JPEG quality 1-100 (default 80)")
  parser.add_argument("--token", default=None,
                      help="require ?token=TOKEN to watch (at least 16 characters)")
  parser.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                      help="also accept viewers from this page origin, e.g. http://myhost:8765")
  parser.add_argument("--max-viewers", type=int, default=server_lib.MAX_VIEWERS,
                      help="viewers at once; more get HTTP 503 (default %(default)s)")
  parser.add_argument("--send-timeout", type=float, default=server_lib.SEND_TIMEOUT_S,
                      metavar="SECONDS",
                      help="drop a viewer when one message to it takes longer, i.e. it stopped "
                      "reading (default %(default)s)")
  return parser


def build(args: argparse.Namespace) -> server_lib.StreamServer:
  """The server the parsed flags describe (loads the models)."""
  if len(args.model) != len(args.checkpoint):
    raise UserError(f"{len(args.model)} --model but {len(args.checkpoint)} --checkpoint: "
                    "give each --model NAME its --checkpoint DIR")
  if args.segmenter is not None and "fashiongan" not in args.model:
    raise UserError("--segmenter is for --model fashiongan: drop it or add that model")
  sources = [sources_lib.parse_source(spec) for spec in args.source]
  processors = []
  for name, checkpoint in zip(args.model, args.checkpoint):
    if name in sources_lib.GENERATORS:
      sources.append(sources_lib.GENERATORS[name](checkpoint))
    elif name == "fashiongan":
      processors.append(processors_lib.load(name, checkpoint, segmenter=args.segmenter))
    else:
      processors.append(processors_lib.load(name, checkpoint))
  return server_lib.StreamServer(
      sources, processors, host=args.host, port=args.port, fps=args.fps, loop=args.loop,
      quality=args.quality, token=args.token, allowed_origins=args.allow_origin,
      max_viewers=args.max_viewers, send_timeout=args.send_timeout)


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                      stream=sys.stderr)
  logging.getLogger("websockets").setLevel(logging.WARNING)
  try:
    server = build(_parser().parse_args(argv))
    asyncio.run(server.serve_forever())
  except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    return 2
  except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, SIGTERM
    pass
  return 0


if __name__ == "__main__":
  sys.exit(main())
