"""Values from users before they reach a command line: refused when they could become options or are malformed."""

from __future__ import annotations

from pathlib import Path

import pytest

from forkdev.core import ship, validate
from forkdev.core.errors import Failure
from forkdev.core.registry import Policy, Ref


@pytest.mark.parametrize(
    "value",
    ["-x", "--upload-pack=touch /tmp/pwned", "", "a\0b", "a\nb", "\udcff"],
)
def test_a_value_that_could_become_an_option_or_is_not_text_is_refused_in_one_sentence(value):
    with pytest.raises(Failure) as exc:
        validate.plain(value, "--upstream", "pass a URL")
    assert "--upstream" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("ref", "ok"),
    [
        ("forkdev/vllm-dev:local-abc", True),
        ("127.0.0.1:5000/x:y", True),
        ("ghcr.io/org/img@sha256:" + "a" * 64, True),
        ("-x", False),
        ("a:b:c", False),
        ("forkdev/Upper", False),
        ("x" * 300, False),
        ("name:" + "t" * 129, False),
    ],
)
def test_image_references_follow_the_engines_grammar(ref, ok):
    if ok:
        assert validate.image_ref(ref) == ref
    else:
        with pytest.raises(Failure, match="image"):
            validate.image_ref(ref)


@pytest.mark.parametrize(
    ("ref", "host"),
    [("127.0.0.1:5000/x:y", "127.0.0.1:5000"), ("localhost/a", "localhost"), ("forkdev/x", None), ("x", None)],
)
def test_the_registry_of_a_reference(ref, host):
    assert validate.registry_host(ref) == host


def test_references_split_into_registry_repository_and_tag():
    assert Ref.parse("debian") == Ref("docker.io", "library/debian", "latest")
    assert Ref.parse("127.0.0.1:5000/a/b:c") == Ref("127.0.0.1:5000", "a/b", "c")


def request(repository: str, tags: tuple[str, ...], push: bool = True) -> ship.Request:
    return ship.Request(
        repo=None,  # type: ignore[arg-type]
        ref=None,
        target=None,  # type: ignore[arg-type]
        source=None,
        bases=(),
        explicit_base=False,
        repository=repository,
        tags=tags,
        push=push,
        force=False,
        cache=None,  # type: ignore[arg-type]
        registry=Policy(),
    )


def test_push_sends_the_extra_tags_and_the_primary_only_when_its_repository_names_a_registry():
    assert ship.pushed_refs(request("forkdev/vllm-dev", ("127.0.0.1:5000/x:y",)), "p") == ["127.0.0.1:5000/x:y"]
    assert ship.pushed_refs(request("127.0.0.1:5000/vllm-dev", ("a/b:c",)), "p") == ["p", "a/b:c"]


def test_bad_tags_and_a_push_with_nowhere_to_go_are_refused_before_anything_is_built():
    with pytest.raises(Failure, match="--push has nothing to push"):
        ship.check(request("forkdev/vllm-dev", ()))
    with pytest.raises(Failure, match="--tag 'Bad:Tag:x'"):
        ship.check(request("127.0.0.1:5000/x", ("Bad:Tag:x",)))
    with pytest.raises(Failure, match="dev.repository"):
        ship.check(request("-evil", ()))
    ship.check(request("forkdev/vllm-dev", (), push=False))


# ---- the one upstream ------------------------------------------------------------------------------------------
def _context(**overrides):
    import copy

    from invoke import Config, Context

    from forkdev.core import config

    cfg = Config(overrides=overrides)
    cfg.load_collection(copy.deepcopy(config.DEFAULTS))
    return Context(cfg)


def test_the_upstream_is_the_flag_else_config_else_the_targets_and_each_is_checked_naming_its_source():
    from forkdev.core import config

    vllm = config.TARGETS["vllm"]
    assert config.upstream(_context(), vllm) == vllm.upstream
    assert config.upstream(_context(upstream={"url": "/srv/vllm"}), vllm) == "/srv/vllm"
    assert config.upstream(_context(upstream={"url": "/srv/vllm"}), vllm, "../mine") == "../mine"
    with pytest.raises(Failure, match=r"^--upstream '--upload-pack=x' starts with '-'"):
        config.upstream(_context(), vllm, "--upload-pack=x")
    with pytest.raises(Failure, match=r"^config upstream.url '-c' starts with '-'"):
        config.upstream(_context(upstream={"url": "-c"}), vllm)


def test_settings_are_resolved_once_from_config_sections_as_invoke_holds_them():
    """config.load reads invoke's own section objects (no Mapping subclass): a configured env or build_args is a
    mapping there; a value that is not one is one line naming its key."""
    from forkdev.core import config

    settings = config.load(
        _context(
            wheel={"env": {"CC": "gcc-13"}, "build_args": {"GCC_VERSION": "13"}, "jobs": "4"},
            container={"env": {"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz0123"}},
            nightly={"cuda_arch": 9.0, "build_args": {"X": 1}},
            dev={"repository": "reg.example:5000/me/{target}-dev"},
        ),
        "sglang",
        "../mine",
    )
    assert settings.target.name == "sglang" and settings.upstream == "../mine"
    assert settings.wheel.env == {"CC": "gcc-13"} and settings.wheel.build_args == {"GCC_VERSION": "13"}
    assert settings.wheel.jobs == 4 and settings.container.env == {"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz0123"}
    assert settings.native.cuda_arch == "9.0" and settings.native.build_args == {"X": 1}
    assert settings.dev.repository == "reg.example:5000/me/sglang-dev"
    assert [k.value for k in settings.secret_values] == ["hf_abcdefghijklmnopqrstuvwxyz0123"]
    with pytest.raises(Failure, match=r"^config wheel.env is not a mapping of NAME: value; fix it in invoke.yaml"):
        config.mapping(["CC=gcc"], "wheel.env")  # invoke itself refuses to merge one over a mapping default
    with pytest.raises(Failure, match=r"^config wheel.jobs 'many' is not a number of compile jobs"):
        config.load(_context(wheel={"jobs": "many"}))
    for jobs in (-1, 1025):
        with pytest.raises(
            Failure, match=rf"^config wheel.jobs {jobs}: set 0 \(every CPU\) up to 1024 in invoke.yaml$"
        ):
            config.load(_context(wheel={"jobs": jobs}))
    assert config.load(_context(wheel={"jobs": 1024})).wheel.jobs == 1024


@pytest.mark.parametrize(
    ("dev", "words"),
    [
        ({"native": "yes"}, r"^config dev.native is 'yes'; set it to refuse \(the default\) or build$"),
        ({"native_jobs": -3}, r"^config dev.native_jobs -3: set 0 \(every CPU\) up to 1024 in invoke.yaml$"),
        ({"native_jobs": "many"}, r"^config dev.native_jobs 'many' is not a number"),
        ({"native_jobs": 10**9}, r"^config dev.native_jobs 1000000000: set 0 \(every CPU\) up to 1024 in invoke.yaml$"),
        ({"native_image": "-x"}, r"^dev.native_image '-x' starts with '-'"),
    ],
)
def test_dev_native_settings_are_checked_once_with_the_rest(dev, words):
    from forkdev.core import config

    assert config.load(_context(dev={"native": "build", "native_jobs": 3})).dev.native_jobs == 3
    with pytest.raises(Failure, match=words):
        config.load(_context(dev=dev))


@pytest.mark.parametrize(
    ("keep", "words"),
    [("many", r"^config nightly.keep 'many' is not a number"), (0, r"^config nightly.keep 0: keep at least 1")],
)
def test_the_nightly_settings_are_checked_once_with_the_rest(keep, words):
    from forkdev.core import config

    settings = config.load(_context(nightly={"push": True, "keep": "3", "log": "~/n.log"}), "sglang")
    assert settings.nightly.push is True and settings.nightly.keep == 3
    assert settings.nightly.log == Path.home() / "n.log" and settings.nightly.repository == "forkdev/sglang"
    with pytest.raises(Failure, match=words):
        config.load(_context(nightly={"keep": keep}))


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        ({"jobs": "many"}, r"^config batch.jobs 'many' is not a number"),
        ({"jobs": 65}, r"^config batch.jobs 65: pass a number from 1 to 64$"),
        ({"repository": "-x/{target}"}, r"^batch.repository '-x/sglang'"),
    ],
)
def test_the_batch_settings_are_checked_once_with_the_rest(batch, words):
    from forkdev.core import config

    settings = config.load(_context(batch={"push": 1, "jobs": "3"}), "sglang")
    assert settings.batch == config.Batch(repository="forkdev/sglang-batch", push=True, jobs=3)
    with pytest.raises(Failure, match=words):
        config.load(_context(batch=batch), "sglang")


def test_the_flag_sections_keep_their_values_as_configured_for_the_flag_to_win_over():
    """overlay:, patches:, cron.schedule/user, smoke.installer/python and fork_sync.repo/into each have a flag that
    wins: a value there is checked only when it is the one used (tasking.setting), so load keeps it as it is."""
    from forkdev.core import config

    settings = config.load(
        _context(
            overlay={"dest": "-x", "repo": ["a"]},
            patches={"into": "", "registry": "-r"},
            cron={"schedule": "nonsense", "user": "-u"},
            smoke={"installer": "npm", "python": "-p"},
            fork_sync={"repo": "-f", "into": None},
        )
    )
    assert settings.overlay == config.Overlay(repo=["a"], definitions="extras/overlay.txt", dest="-x")
    assert settings.patches == config.Patches(repo=".", registry="-r", into="")
    assert (settings.cron.schedule, settings.cron.user) == ("nonsense", "-u")
    assert (settings.smoke.installer, settings.smoke.python) == ("npm", "-p")
    assert (settings.fork_sync.repo, settings.fork_sync.into) == ("-f", "")


@pytest.mark.parametrize(
    ("cache", "words"),
    [
        ("-cache", r"^config cache_dir '-cache' starts with '-', which a command would take as an option; set it to"),
        ("", r"^config cache_dir is empty; set it to a directory path$"),
        ("/tmp/c\n* * * * * x", r"^config cache_dir '/tmp/c\\n\* \* \* \* \* x' holds a line break or NUL; set it"),
        (["/a"], r"^config cache_dir must be text, not list"),
    ],
)
def test_the_cache_dir_is_checked_once_for_every_task(cache, words):
    """Every task hands paths under the cache to git or the engine, and cron writes it into its line: a value no
    command line can carry is refused by load, before any task runs."""
    from forkdev.core import config

    with pytest.raises(Failure, match=words):
        config.load(_context(cache_dir=cache))
    assert config.load(_context(cache_dir="~/c")).cache == Path.home() / "c"


@pytest.mark.parametrize(
    ("smoke", "words"),
    [({"timeout": "soon"}, r"^config smoke.timeout 'soon' is not a number of seconds; fix it in invoke.yaml$")],
)
def test_the_smoke_settings_are_checked_once_with_the_rest(smoke, words):
    from forkdev.core import config

    settings = config.load(_context(smoke={"no_index": 1, "timeout": "90"}))
    assert settings.smoke == config.Smoke(installer="auto", python="", no_index=True, timeout=90.0)
    with pytest.raises(Failure, match=words):
        config.load(_context(smoke=smoke))


@pytest.mark.parametrize(
    ("demo", "words"),
    [
        ({"prefix": "docker.io/someone"}, r"^demo.prefix 'docker.io/someone' names a registry"),
        ({"prefix": "-rm"}, r"^demo.prefix '-rm'"),
        ({"os_image": "-x"}, r"^demo.os_image '-x'"),
        ({"file_bytes": -5}, r"^demo.file_bytes '-5' is not a size in bytes; set 0 for the real tree's sizes$"),
        ({"file_bytes": "big"}, r"^demo.file_bytes 'big' is not a size in bytes"),
    ],
)
def test_the_demo_settings_are_checked_once_with_the_rest(demo, words):
    from forkdev.core import config

    assert config.load(_context()).demo == config.Demo(
        prefix="forkdev-demo", os_image="forkdev-demo/debian:bookworm", os_image_configured=False, file_bytes=0
    )
    settings = config.load(_context(demo={"prefix": "mine/demo/", "os_image": "debian:12", "file_bytes": "2048"}))
    assert settings.demo == config.Demo(
        prefix="mine/demo", os_image="debian:12", os_image_configured=True, file_bytes=2048
    )
    with pytest.raises(Failure, match=words):
        config.load(_context(demo=demo))


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ({"args": ["--full"]}, r"^cron.args must be text, not list; write the nightly's flags, e.g. '--full'$"),
        ({"args": "--ref 'open"}, r"^cron.args '--ref 'open' cannot be split into words \(.*\); close its quotes$"),
    ],
)
def test_the_cron_settings_are_checked_once_with_the_rest(cron, words):
    from forkdev.core import config

    settings = config.load(_context(cron={"args": "--full --ref 'my branch'", "user": "builder"}))
    assert settings.cron == config.Cron(schedule="0 2 * * *", user="builder", args=("--full", "--ref", "my branch"))
    with pytest.raises(Failure, match=words):
        config.load(_context(cron=cron))


@pytest.mark.parametrize(
    ("fork_sync", "words"),
    [
        ({"protect": "extras/"}, r"^config fork_sync.protect is str 'extras/', not a list; write it as a list"),
        ({"protect": None}, r"^config fork_sync.protect is NoneType None, not a list"),
        ({"protect": ["-x"]}, r"^config fork_sync.protect '-x' starts with '-'.*; pass a path or glob of the repo"),
    ],
)
def test_the_fork_sync_settings_are_checked_once_with_the_rest(fork_sync, words):
    """The strategies (merged over the default by invoke) stay as configured: core.sync parses them when fork-sync
    runs, as importing it here would cost every task's start. (One that is no mapping invoke itself refuses to merge
    over the default.)"""
    from forkdev.core import config

    settings = config.load(_context(fork_sync={"protect": ("extras/",), "strategies": {"a": "any"}, "push": 1}))
    assert settings.fork_sync == config.ForkSync(
        repo=".",
        into="",
        protect=("extras/",),
        strategies={".gitignore": "union", "a": "any"},
        push=True,
        autostash=False,
    )
    with pytest.raises(Failure, match=words):
        config.load(_context(fork_sync=fork_sync))


@pytest.mark.parametrize(
    ("value", "low", "high", "words"),
    [
        ("x", 1, None, r"^n 'x' is not a number of things; fix it$"),
        (None, 1, None, r"^n 'None' is not a number of things; fix it$"),
        (0, 1, 5, r"^n 0: from 1 to 5$"),
        ("6", 1, 5, r"^n 6: from 1 to 5$"),
    ],
)
def test_one_whole_number_check_serves_every_count_in_config(value, low, high, words):
    from forkdev.core import config

    assert config.whole_number("3", "n", 1, 5, " of things", "fix it", "from 1 to 5") == 3
    assert config.whole_number(-7, "n", None, None, "", "fix it") == -7
    with pytest.raises(Failure, match=r"^n '-1' is not a number \(0: all\); fix it$"):
        config.whole_number(-1, "n", 0, None, " (0: all)", "fix it")  # no `outside`: the first sentence again
    with pytest.raises(Failure, match=words):
        config.whole_number(value, "n", low, high, " of things", "fix it", "from 1 to 5")


def test_a_layer_on_a_known_image_tries_no_other_base_and_neither_pushes_nor_forces(tmp_path):
    from forkdev.core import config, secrets
    from forkdev.core.gitrepo import Repo
    from forkdev.core.proc import Runner

    req = ship.Request.layer_on(
        "me/vllm:native-abc",
        repo=Repo(tmp_path, Runner(echo=False)),
        commit="a" * 40,
        target=config.TARGETS["vllm"],
        image="me/vllm:" + "a" * 40,
        repository="me/vllm",
        upstream="/srv/vllm",
        source=None,
        cache=tmp_path,
        registry=Policy(),
        labels={"x": "1"},
        secret_paths=secrets.DEFAULT,
        secret_values=(),
    )
    assert req.bases == ("me/vllm:native-abc",) and req.explicit_base and req.ref == "a" * 40
    assert not req.push and not req.force and req.tags == () and req.primary == "me/vllm:" + "a" * 40


@pytest.mark.parametrize(
    ("overrides", "variable", "raw", "words"),
    [
        ({"cache_dir": "-c"}, "INVOKE_CACHE_DIR", "-c", r"^cache_dir \(INVOKE_CACHE_DIR\) '-c' starts with '-'"),
        ({"upstream": {"url": "-c"}}, "INVOKE_UPSTREAM_URL", "-c", r"^upstream.url \(INVOKE_UPSTREAM_URL\) '-c' "),
        ({"dev": {"native": "often"}}, "INVOKE_DEV_NATIVE", "often", r"^dev.native \(INVOKE_DEV_NATIVE\) is 'often'"),
        ({"dev": {"native_jobs": 5000}}, "INVOKE_DEV_NATIVE_JOBS", "5000", r"^dev.native_jobs \(INVOKE_DEV_NATIV"),
        ({"wheel": {"jobs": 5000}}, "INVOKE_WHEEL_JOBS", "5000", r"^wheel.jobs \(INVOKE_WHEEL_JOBS\) 5000: set 0"),
        ({"batch": {"jobs": 99}}, "INVOKE_BATCH_JOBS", "99", r"^batch.jobs \(INVOKE_BATCH_JOBS\) 99: pass a number"),
        ({"batch": {"jobs": 99}}, "INVOKE_BATCH_JOBS", "099", r"^batch.jobs \(INVOKE_BATCH_JOBS\) 99: pass a numb"),
        ({"nightly": {"keep": 0}}, "INVOKE_NIGHTLY_KEEP", "0", r"^nightly.keep \(INVOKE_NIGHTLY_KEEP\) 0: keep"),
        ({"smoke": {"timeout": "soon"}}, "INVOKE_SMOKE_TIMEOUT", "soon", r"^smoke.timeout \(INVOKE_SMOKE_TIMEOUT\) "),
    ],
)
def test_a_bad_value_is_named_by_the_invoke_variable_it_came_from_else_as_config(
    monkeypatch, overrides, variable, raw, words
):
    """cron's entry, CI and a shell's export set INVOKE_* variables, which are over invoke.yaml: a value one of them
    holds is named by it, so the user knows where to fix it. The same value from invoke.yaml is `config KEY`."""
    from forkdev.core import config

    monkeypatch.setenv(variable, raw)
    with pytest.raises(Failure, match=words):
        config.load(_context(**overrides))
    monkeypatch.delenv(variable)
    with pytest.raises(Failure, match=r"^config [a-z_.]+ "):
        config.load(_context(**overrides))
