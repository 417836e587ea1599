"""TorchServe's gRPC inference API: inference.proto and the Python stubs generated from it (serving/proto/generate.py).

The generated modules are committed so that a client needs grpcio, protobuf and googleapis-common-protos at run
time and no code generator; tests/test_grpc_client.py checks they are what the pinned grpcio-tools generates now.
"""
