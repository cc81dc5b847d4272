"""symbp: symbolic derivation and verification of backpropagation.

SymPy builds the MLP loss symbolically, derives per-element partials and assembles them into
denominator-layout matrices, then lambdifies the results to NumPy so they can be checked against a
numeric engine and exported as LaTeX derivation documents.

>>> import symbp
>>> net = symbp.MLP([4, 5, 3, 3], hidden="relu", output="softmax", loss="cross_entropy")
>>> grads = symbp.derive(net)
>>> grads["W2"].shape
(3, 5)
"""

from .codegen import compile  # noqa: A004 - symbp.compile, as INTERFACE.md names it
from .derive import Gradients, derive
from .errors import SymbpError
from .example import worked_example
from .flow import flow
from .graph import Node, graph
from .layers import Network, network
from .network import MLP
from .numeric import lambdify
from .registry import custom_activation
from .verify import Report, Result, textbook, verify

__version__ = "0.1.0"

__all__ = ["MLP", "Gradients", "Network", "Node", "Report", "Result", "SymbpError", "compile", "custom_activation",
           "derive", "flow", "graph", "lambdify", "network", "textbook", "verify", "worked_example", "__version__"]
