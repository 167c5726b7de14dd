"""onnxopt: an ONNX graph-transformation and deployment optimizer for convolutional networks."""
from .api import apply, default_output, inspect, pass_names, verify
from .errors import OnnxoptError, VerificationError
from .passmanager import Pass, PassContext, PassResult, register
from .verify import DEFAULT_ATOL, DEFAULT_RTOL

__version__ = "0.1.0"

__all__ = ["apply", "inspect", "verify", "default_output", "pass_names", "Pass", "PassContext", "PassResult",
           "register", "OnnxoptError", "VerificationError", "DEFAULT_RTOL", "DEFAULT_ATOL", "__version__"]
