"""Regenerate serving/proto/inference_pb2.py and inference_pb2_grpc.py from inference.proto with grpcio-tools.

    python -m serving.proto.generate          # after changing inference.proto or the grpcio-tools pin

``google/rpc/status.proto`` (imported by inference.proto) comes from the installed googleapis-common-protos and the
well-known types (google/protobuf/empty.proto) from grpcio-tools itself, so neither is kept in the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("serving/proto/inference.proto")  # relative to ROOT: the path becomes the generated modules' package
GENERATED = ("inference_pb2.py", "inference_pb2_grpc.py")


def generate(out_root: Path = ROOT) -> list[Path]:
    """Run protoc on :data:`PROTO`; the modules land in ``out_root``/serving/proto/. Returns their paths."""
    import google.rpc
    import grpc_tools
    from grpc_tools import protoc

    include = [f"-I{ROOT}", f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
               f"-I{Path(google.rpc.__path__[0]).parents[1]}"]  # the folder holding google/rpc/status.proto
    (out_root / PROTO.parent).mkdir(parents=True, exist_ok=True)
    code = protoc.main(["grpc_tools.protoc", *include, f"--python_out={out_root}", f"--grpc_python_out={out_root}",
                        str(ROOT / PROTO)])
    if code != 0:
        raise RuntimeError(f"protoc failed ({code}) on {PROTO}")
    return [out_root / PROTO.parent / name for name in GENERATED]


if __name__ == "__main__":
    for path in generate():
        print(f"wrote {path}")
    sys.exit(0)
