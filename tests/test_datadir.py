"""One data-dir layout: the paths the server, CLI, worker and registry use come from DataDir."""

from pathlib import Path

from core.config import ServeConfig
from core.datadir import DataDir
from core.models import converted_dir
from storage import Store
from training import registry
from training.worker import log_tail


def test_every_path_lives_under_the_data_dir(tmp_path):
    dirs = DataDir(str(tmp_path))
    assert dirs.db == tmp_path / "exemplar.db" == ServeConfig(data_dir=tmp_path).paths.db
    assert dirs.job_log(3) == tmp_path / "logs" / "job-3.log"
    assert converted_dir(tmp_path).parent == dirs.base
    assert dirs.resolve("adapters/v1") == tmp_path / "adapters" / "v1"
    assert dirs.resolve("/elsewhere/v1") == Path("/elsewhere/v1")


def test_the_registry_and_the_job_log_use_the_layout(tmp_path):
    dirs = DataDir(tmp_path)
    store = Store(dirs.db)
    try:
        temp = registry.new_temp_dir(tmp_path)
        (temp / "adapter_config.json").write_text("{}")
        row = registry.commit_version(store, tmp_path, temp)
        assert Path(row["path"]) == (dirs.adapters / row["version"]).resolve()
    finally:
        store.close()
    dirs.job_log(1).parent.mkdir(parents=True)
    dirs.job_log(1).write_text("step 1\nstep 2\n")
    assert log_tail(tmp_path, 1).endswith("step 2\n") and log_tail(tmp_path, 2) is None
