"""Deployable exports: the merged model as one ONNX graph, and the onnxruntime runner ``predict`` uses."""
