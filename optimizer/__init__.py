"""onnxopt: an ONNX graph-transformation and deployment optimizer for convolutional networks."""
from .errors import OnnxoptError, VerificationError

__version__ = "0.1.0"

__all__ = ["OnnxoptError", "VerificationError", "__version__"]
