"""See the learned routing of XAttnRes networks: which history entries every block reads, where, how decidedly.

- :mod:`.layout`: blocks and history entries named by stage (``e2`` .. ``d4``; ``e1`` .. ``input``), and the fixed
  topology of the plain network;
- :mod:`.capture`: the attention weights of every block during forward passes (hooks, eager only);
- :mod:`.report`: :class:`RoutingReport`, mean weights overall, per class and at boundaries / interiors, written as
  CSV, JSON and pictures;
- :mod:`.entropy`: the per-position entropy of the weights, and its series over training epochs;
- :mod:`.bundle`: :func:`run_routing_report`, the report of a trained bundle on scans;
- :mod:`.prune`: :func:`weak_connections`, the connections that carry almost no weight.
"""

from xattnres_monai.routing.capture import capture_routing, routing_weights
from xattnres_monai.routing.entropy import attention_entropy, block_entropies, routing_entropy_series
from xattnres_monai.routing.layout import (
    INPUT,
    BlockLayout,
    entry_columns,
    has_routing,
    routing_layout,
    topology_matrix,
)
from xattnres_monai.routing.prune import weak_connections
from xattnres_monai.routing.report import REPORT_FILES, RoutingReport, predicted_classes

__all__ = [
    "INPUT",
    "REPORT_FILES",
    "BlockLayout",
    "RoutingReport",
    "attention_entropy",
    "block_entropies",
    "capture_routing",
    "entry_columns",
    "has_routing",
    "predicted_classes",
    "routing_entropy_series",
    "routing_layout",
    "routing_weights",
    "topology_matrix",
    "weak_connections",
]
