"""Deployment without Lightning: mvtec_ad.deploy.Inferencer runs an exported .onnx or OpenVINO .xml
(or a .ckpt) on images of any size, with the model's own geometry and thresholds.

    from mvtec_ad.deploy import Inferencer
    result = Inferencer("patchcore.onnx")("part.png")

Export writes the files (`python -m mvtec_ad export --format onnx|openvino`, mvtec_ad.deploy.openvino
for OpenVINO FP32/FP16/INT8); the metadata they carry is mvtec_ad.deploy.metadata.
"""

from mvtec_ad.deploy.inferencer import Inferencer, Result

__all__ = ["Inferencer", "Result"]
