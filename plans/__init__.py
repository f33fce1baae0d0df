"""The plan contract: typed specs of clusters, models, experiments, allocations and plans.

Imports nothing else of the project; the planner, estimator, executor and CLI all speak it.
"""

from plans.algorithms import ALGORITHM_MFCS, MFC, mfcs, roles, trained_roles
from plans.allocation import Allocation, DeviceMesh, ParallelStrategy
from plans.cluster import DEVICES, ClusterSpec, DeviceInfo
from plans.errors import PlanError
from plans.experiment import ExperimentSpec, OptimizerSpec, RoleSpec
from plans.io import (
    example_names,
    example_path,
    experiment_from_dict,
    load_experiment,
    load_plan,
    plan_from_dict,
    save_plan,
)
from plans.model import PRESETS, ModelSpec, preset
from plans.plan import (
    FORMAT_VERSION,
    CallEstimate,
    Plan,
    PlanEstimate,
    Provenance,
    check_allocation,
)

__all__ = [
    "ALGORITHM_MFCS",
    "DEVICES",
    "FORMAT_VERSION",
    "MFC",
    "PRESETS",
    "Allocation",
    "CallEstimate",
    "ClusterSpec",
    "DeviceInfo",
    "DeviceMesh",
    "ExperimentSpec",
    "ModelSpec",
    "OptimizerSpec",
    "ParallelStrategy",
    "Plan",
    "PlanError",
    "PlanEstimate",
    "Provenance",
    "RoleSpec",
    "check_allocation",
    "example_names",
    "example_path",
    "experiment_from_dict",
    "load_experiment",
    "load_plan",
    "mfcs",
    "plan_from_dict",
    "preset",
    "roles",
    "save_plan",
    "trained_roles",
]
