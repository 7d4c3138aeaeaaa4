"""Explain and deploy: Grad-CAM maps of the refined logits (`cxr-explain`) and a self-contained fold ensemble
exported to ONNX or TorchScript (`cxr-export`). Needs the optional extra `cxr_fast[deploy]` (grad-cam, onnx,
onnxruntime, onnxscript); the modules import those packages lazily."""
