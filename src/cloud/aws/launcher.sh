# ---- the AWS part of the launcher (src/cloud/aws/launcher.sh) ----
# An EC2 instance launched with shutdown behaviour "terminate": shutting down ends it. The
# CloudWatch agent ships the log, `aws s3 cp` uploads with the instance role, and the Platform
# token comes from SSM Parameter Store or Secrets Manager (read with the instance role).
# Overrides for running it outside EC2 (tests, the sandbox):
#   VMFORGE_FLUSH_WAIT  seconds to give the log agent to ship the last lines (default: 15)
LAUNCH_DIR="$STATE_DIR/run"
LOG_FILE="$ROOT/var/log/vmforge/run.log"
LAUNCHER_LOG="$LOG_FILE"
# The machine-readable lines once more, alone: the agent ships them to the Run's markers stream,
# the only place the operator believes them (the pipeline's output, in LOG_FILE, may print anything).
MARKER_LOG="$ROOT/var/log/vmforge/markers.log"
LOG_DESTINATION="CloudWatch Logs $VMF_LOG_GROUP / $VMF_LOG_STREAM"
LOG_STEP=log-agent
DOCKER_PACKAGE=docker
JAVA_PACKAGE=java-21-amazon-corretto-headless
AGENT_DIR="$ROOT/opt/aws/amazon-cloudwatch-agent"
AGENT_CTL="$AGENT_DIR/bin/amazon-cloudwatch-agent-ctl"
AGENT_CONFIG="$AGENT_DIR/etc/vmforge-agent.json"
FLUSH_WAIT="${VMFORGE_FLUSH_WAIT:-15}"
export AWS_DEFAULT_REGION="$VMF_REGION"

cloud_install() { dnf install -y "$@"; }

cloud_start_logging() {
  if [[ ! -x "$AGENT_CTL" ]]; then
    log "installing the CloudWatch agent"
    cloud_install amazon-cloudwatch-agent
  fi
  mkdir -p "$(dirname "$AGENT_CONFIG")"
  local config=${VMF_AGENT_CONFIG//@LOG_DIR@/"$(dirname "$LOG_FILE")"}
  config=${config//@LAUNCH_DIR@/"$LAUNCH_DIR"}
  printf '%s\n' "$config" >"$AGENT_CONFIG"
  "$AGENT_CTL" -a fetch-config -m ec2 -s -c "file:$AGENT_CONFIG"
  log "log agent shipping to $VMF_LOG_GROUP / $VMF_LOG_STREAM"
}

cloud_read_token() {
  case "$VMF_TOKEN_SOURCE" in
    ssm)
      log "reading the Platform token from SSM parameter $VMF_TOKEN_REF"
      PLATFORM_TOKEN=$(aws ssm get-parameter --region "$VMF_TOKEN_REGION" --name "$VMF_TOKEN_REF" \
        --with-decryption --query Parameter.Value --output text)
      ;;
    secretsmanager)
      log "reading the Platform token from Secrets Manager secret $VMF_TOKEN_REF"
      PLATFORM_TOKEN=$(aws secretsmanager get-secret-value --region "$VMF_TOKEN_REGION" --secret-id "$VMF_TOKEN_REF" \
        --query SecretString --output text)
      ;;
    *)
      log "unknown Platform token source $VMF_TOKEN_SOURCE"
      return 1
      ;;
  esac
}

cloud_upload() { timeout 300 aws s3 cp --only-show-errors "$1" "$2"; }

cloud_download() { timeout 120 aws s3 cp --only-show-errors "$1" -; }

# The agent ships new lines every few seconds; give it time before the machine goes away.
cloud_flush_logs() { sleep "$FLUSH_WAIT"; }
# ---- end of the AWS part ----
