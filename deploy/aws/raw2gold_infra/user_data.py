"""The orchestrator host's boot script: Docker, the compose stack, a DAG/pipeline sync.

It carries no secret value: compose secrets are generated on the host by init-secrets.sh, and
connections are read at run time from Secrets Manager with the instance profile's credentials.
"""

from __future__ import annotations

from pathlib import Path

COMPOSE_DIR = Path(__file__).resolve().parents[2] / "compose"
HOME = "/opt/raw2gold"
#: User data is limited to 16 KB before base64 encoding.
USER_DATA_LIMIT = 16 * 1024


def _heredoc(path: str, body: str, mode: str) -> str:
    """Shell lines writing ``body`` verbatim to ``path``."""
    if "RAW2GOLD_EOF" in body:
        raise ValueError("file body contains the heredoc delimiter")
    return f"cat > {path} <<'RAW2GOLD_EOF'\n{body.rstrip()}\nRAW2GOLD_EOF\nchmod {mode} {path}\n"


def _strip_comments(text: str) -> str:
    """Drop full-line comments and blank lines (keeps user data small); keeps the shebang."""
    lines = text.splitlines()
    kept = [
        line
        for i, line in enumerate(lines)
        if line.strip() and not (line.lstrip().startswith("#") and not (i == 0 and "#!" in line))
    ]
    return "\n".join(kept) + "\n"


def render(
    *, bucket: str, region: str, registry: str, image_uri: str, ui_on_private_ip: bool
) -> str:
    """The whole user data script (CDK tokens may appear in the arguments)."""
    compose = _strip_comments((COMPOSE_DIR / "compose.yaml").read_text())
    init_secrets = _strip_comments((COMPOSE_DIR / "init-secrets.sh").read_text())
    bind = '"$(imds local-ipv4)"' if ui_on_private_ip else "127.0.0.1"
    lake_yaml = (
        "# Written by the raw2gold stack: the lake section for this deployment.\n"
        "# Credentials come from the instance profile: no keys here.\n"
        f"lake:\n  uri: s3://{bucket}/\n  s3:\n    region: {region}\n"
    )
    sync = (
        "#!/bin/bash\nset -euo pipefail\n"
        f"aws s3 sync --only-show-errors --delete s3://{bucket}/_deploy/dags/ {HOME}/dags/\n"
        "aws s3 sync --only-show-errors --delete --exclude lake.aws.yaml "
        f"s3://{bucket}/_deploy/pipelines/ {HOME}/pipelines/\n"
    )
    start = (
        "#!/bin/bash\nset -euo pipefail\n"
        f"cd {HOME}\n"
        f"aws ecr get-login-password --region {region} "
        f"| docker login --username AWS --password-stdin {registry}\n"
        "docker compose pull --quiet\n"
        f"docker logout {registry}\n"
        "docker compose up -d --remove-orphans\n"
    )
    service = (
        "[Unit]\nDescription=raw2gold Airflow stack\n"
        "Requires=docker.service\nAfter=docker.service network-online.target\n"
        "Wants=network-online.target\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nTimeoutStartSec=1200\n"
        f"WorkingDirectory={HOME}\n"
        f"ExecStartPre={HOME}/bin/sync\nExecStart={HOME}/bin/start\n"
        "ExecStop=/usr/bin/docker compose down\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    sync_service = (
        "[Unit]\nDescription=raw2gold DAG and pipeline sync from S3\n"
        f"[Service]\nType=oneshot\nExecStart={HOME}/bin/sync\n"
    )
    sync_timer = (
        "[Unit]\nDescription=raw2gold sync every 5 minutes\n"
        "[Timer]\nOnBootSec=5min\nOnUnitActiveSec=5min\n"
        "[Install]\nWantedBy=timers.target\n"
    )
    parts = [
        "#!/bin/bash\n"
        "# raw2gold orchestrator host bootstrap (Ubuntu 24.04). Holds no secret value.\n"
        "set -euo pipefail\n"
        "exec > >(tee -a /var/log/raw2gold-bootstrap.log) 2>&1\n"
        "export DEBIAN_FRONTEND=noninteractive\n"
        "imds() {\n"
        "  local t\n"
        "  t=$(curl -sfX PUT http://169.254.169.254/latest/api/token "
        '-H "X-aws-ec2-metadata-token-ttl-seconds: 60")\n'
        '  curl -sf -H "X-aws-ec2-metadata-token: $t" '
        '"http://169.254.169.254/latest/meta-data/$1"\n'
        "}\n"
        "apt-get update -q\n"
        "apt-get install -y -q docker.io docker-compose-v2 openssl curl\n"
        "snap install aws-cli --classic\n"
        "systemctl enable --now docker\n"
        f"install -d -m 0755 {HOME} {HOME}/bin {HOME}/dags {HOME}/pipelines\n",
        _heredoc(f"{HOME}/compose.yaml", compose, "0644"),
        _heredoc(f"{HOME}/bin/init-secrets.sh", init_secrets, "0755"),
        _heredoc(f"{HOME}/bin/sync", sync, "0755"),
        _heredoc(f"{HOME}/bin/start", start, "0755"),
        _heredoc(f"{HOME}/pipelines/lake.aws.yaml", lake_yaml, "0644"),
        _heredoc("/etc/systemd/system/raw2gold.service", service, "0644"),
        _heredoc("/etc/systemd/system/raw2gold-sync.service", sync_service, "0644"),
        _heredoc("/etc/systemd/system/raw2gold-sync.timer", sync_timer, "0644"),
        f"{HOME}/bin/init-secrets.sh {HOME}\n",
        # Non-secret settings only: image, region and where the UI port is published.
        f'printf "RAW2GOLD_IMAGE=%s\\nAWS_REGION=%s\\nAIRFLOW_UI_BIND=%s\\n" '
        f'"{image_uri}" "{region}" {bind} > {HOME}/.env\n',
        "systemctl daemon-reload\n"
        "systemctl enable --now raw2gold-sync.timer\n"
        "systemctl enable --now raw2gold.service\n",
    ]
    return "".join(parts)
