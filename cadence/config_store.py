"""Every command's structured config schema, stored in Hydra's ConfigStore (``cadence.cli`` calls
:func:`register` before composing a command's config)."""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from cadence.bench import config as bench
from cadence.config import (
    CacheApp,
    CollectApp,
    DemoApp,
    EvalApp,
    ExportApp,
    FinetuneApp,
    ImportApp,
    TaskInitApp,
    TrainApp,
    VerifierTrainApp,
)
from cadence.robot_schema import RecordApp, RobotCalibrateApp, RobotCheckApp, RobotServeApp, RunApp


def register() -> None:
    cs = ConfigStore.instance()
    for name, node in {"collect_schema": CollectApp, "train_schema": TrainApp, "eval_schema": EvalApp,
                       "demo_schema": DemoApp, "run_schema": RunApp, "robot_serve_schema": RobotServeApp,
                       "robot_check_schema": RobotCheckApp,
                       "robot_calibrate_schema": RobotCalibrateApp, "record_schema": RecordApp,
                       "export_schema": ExportApp, "bench_latency_schema": bench.BenchLatencyApp,
                       "bench_loop_schema": bench.BenchLoopApp, "import_schema": ImportApp,
                       "task_init_schema": TaskInitApp,
                       "bench_success_schema": bench.BenchSuccessApp,
                       "bench_offline_schema": bench.BenchOfflineApp, "bench_mode_schema": bench.BenchModeApp,
                       "cache_schema": CacheApp, "bench_cache_schema": bench.BenchCacheApp,
                       "bench_anchor_schema": bench.BenchAnchorApp, "bench_streaming_schema": bench.BenchStreamingApp,
                       "finetune_schema": FinetuneApp, "bench_finetune_schema": bench.BenchFinetuneApp,
                       "bench_scale_schema": bench.BenchScaleApp, "bench_eval_schema": bench.BenchEvalApp,
                       "bench_server_schema": bench.BenchServerApp,
                       "bench_record_schema": bench.BenchRecordApp, "bench_peer_schema": bench.BenchPeerApp,
                       "bench_search_schema": bench.BenchSearchApp,
                       "verifier_train_schema": VerifierTrainApp}.items():
        cs.store(name=name, node=node)
