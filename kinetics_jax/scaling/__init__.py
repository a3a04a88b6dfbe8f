"""Scaling-law analysis of test-time scaling (docs/evaluation.md): per-query optima under a budget, cross-model
Pareto frontiers under FLOPs and eFLOPs, the costlier ratio of FLOPs-guided choices, iso-cost grids, sigmoid
laws of accuracy against log cost, and the report (PNGs, CSV, JSON).

    records = kinetics_jax.eval.results.read_records(["aime24.jsonl"])
    points = [p for run in scaling.group_runs(records) if run.strategy == "long_cot"
              for p in scaling.run_points(run, "B200")]
    analysis = scaling.analyze(points)          # one dataset and strategy
    scaling.write_report(analysis, "runs/scaling/aime24/long_cot")
"""

from kinetics_jax.scaling.fit import SigmoidFit, fit_sigmoid, sigmoid_law
from kinetics_jax.scaling.points import (COST_MODELS, ConfigPoints, align_queries, best_of_n_points, long_cot_points,
                                         run_points)
from kinetics_jax.scaling.optima import query_choice, query_optimum
from kinetics_jax.scaling.curves import StepCurve, budget_curve
from kinetics_jax.scaling.frontier import Frontier, cost_grid, pareto_frontier, policy_frontiers, smooth3
from kinetics_jax.scaling.costlier import CostlierRatio, costlier_ratio
from kinetics_jax.scaling.isocost import IsoCostGrid, isocost_grid
from kinetics_jax.scaling.analysis import Analysis, analyze
from kinetics_jax.scaling.runs import STRATEGIES, Run, Sample, group_runs
from kinetics_jax.scaling.plots import (plot_fits, plot_frontiers, plot_isocost, plot_optimal_model, plot_policies,
                                        summary, write_report)

__all__ = ["COST_MODELS", "STRATEGIES", "Analysis", "ConfigPoints", "CostlierRatio", "Frontier", "IsoCostGrid",
           "Run", "Sample", "SigmoidFit", "StepCurve", "align_queries", "analyze",
           "best_of_n_points", "budget_curve", "cost_grid", "costlier_ratio", "fit_sigmoid", "group_runs", "isocost_grid",
           "long_cot_points", "pareto_frontier", "plot_fits", "plot_frontiers",
           "plot_isocost", "plot_optimal_model", "plot_policies", "policy_frontiers",
           "query_choice", "query_optimum", "run_points", "sigmoid_law", "smooth3", "summary", "write_report"]
