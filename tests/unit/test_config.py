"""Config parsing: clear errors with key paths, frozen values."""

import pytest

from gitsync.config import load, parse, parse_duration
from gitsync.errors import ConfigError


def _app(**kw):
    return {"name": "shop", "repo": "https://git.example.test/acme/deploy.git", **kw}


def test_minimal_app_gets_defaults():
    """Only name and repo are required."""
    cfg = parse({"apps": [_app()]})
    (app,) = cfg.apps
    assert app.ref == "main"
    assert app.interval == 60.0
    assert app.prune.enabled
    assert not app.self_heal
    assert app.rollback.enabled


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"apps": [_app(selfheal=True)]}, "apps[0].selfheal: unknown key"),
        ({"apps": [_app(interval="soon")]}, "apps[0].interval: 'soon' is not a duration"),
        ({"apps": [_app(), _app()]}, "app name 'shop' is used twice"),
        ({"apps": [_app(name="Shop_1")]}, "apps[0].name: 'Shop_1' must be a DNS label"),
        ({"apps": [_app(path="../x")]}, "apps[0].path: '../x' must be a relative path"),
        ({"apps": [{"name": "x"}]}, "apps[0].repo: Field required"),
        (
            {"apps": [_app(repo="http://git.example.test/deploy.git")]},
            "apps[0].repo: http:// is unencrypted",
        ),
        ({"apps": [_app(repo="git://h/d.git")]}, "or set allowInsecure: true on this app"),
        ({"apps": [_app(verify={})]}, "apps[0].verify: give exactly one of secretRef or keys"),
        ({"apps": [_app(webhook={})]}, "apps[0].webhook.secretRef: Field required"),
    ],
)
def test_bad_config_says_where(raw, expected):
    """Each bad config names the key path and the problem."""
    with pytest.raises(ConfigError) as e:
        parse(raw, source="gitsync.yaml")
    assert expected in str(e.value)
    assert "gitsync.yaml" in str(e.value)


def test_durations():
    """Durations accept seconds, and s/m/h suffixes."""
    assert parse_duration("90s") == 90
    assert parse_duration("5m") == 300
    assert parse_duration("1h30m") == 5400
    assert parse_duration(15) == 15
    for bad in ("0s", "-1", "5x", True):
        with pytest.raises(ValueError, match=r"duration|zero"):
            parse_duration(bad)


def test_prune_shorthand_and_branch_alias():
    """`prune: false` and `branch:` are accepted."""
    (app,) = parse({"apps": [_app(prune=False, branch="release")]}).apps
    assert not app.prune.enabled
    assert app.ref == "release"


def test_load_reports_yaml_line(tmp_path):
    """Broken YAML in the config file is reported with file:line."""
    f = tmp_path / "c.yaml"
    f.write_text("apps:\n  - name: a\n    repo: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: config is not valid YAML"):
        load(f)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("apps: []\nselfHeal: true\nselfHeal: false\n", r"c\.yaml:3: .*'selfHeal' appears twice"),
        ("apps: []\n---\napps: []\n", r"c\.yaml:3: .*a second YAML document"),
    ],
)
def test_load_refuses_duplicate_keys_and_documents(tmp_path, text, expected):
    """A key given twice, or a second document, is an error with its line, not last-wins."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load(f)


def test_plaintext_repo_allowed_with_allow_insecure():
    """allowInsecure: true accepts http:// and git://; verify and webhook refs parse."""
    raw = _app(
        repo="git://git.example.test/deploy.git",
        allowInsecure=True,
        verify={"secretRef": "signers"},
        webhook={"secretRef": "hook-shop"},
    )
    (app,) = parse({"apps": [raw]}).apps
    assert app.allow_insecure
    assert app.verify is not None
    assert app.verify.secret_ref == "signers"
    assert app.webhook is not None
    assert app.webhook.secret_ref.name == "hook-shop"
    assert app.webhook.secret_ref.key == "secret"
