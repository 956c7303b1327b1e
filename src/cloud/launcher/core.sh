#!/bin/bash
# vmforge launcher: runs ONE Nextflow pipeline on this machine, then shuts the machine down.
#
# This is the core every cloud shares; the operator renders it per Run (src/cloud/launcher/render.ts):
# the settings marker below is replaced by shell-quoted settings, the cloud marker by the cloud's
# part (src/cloud/aws/launcher.sh, src/cloud/azure/launcher.sh). The cloud part sets
#   LAUNCH_DIR       where nextflow runs
#   LOG_FILE         where the launcher's output and the pipeline's go (what is shipped)
#   LAUNCHER_LOG     where the launcher's own lines go (may be LOG_FILE), with its machine-readable
#                    ones (VMFORGE_PIPELINE_STARTED, VMFORGE_BOOTSTRAP_FAILED=, VMFORGE_EXIT_CODE=)
#   MARKER_LOG       optional: a file that gets the machine-readable lines only, as well (for a
#                    cloud whose LAUNCHER_LOG is LOG_FILE, so the pipeline's output never mixes in)
#   LOG_DESTINATION  where the shipped log can be read (said once, on the console)
#   LOG_STEP         the name of the log shipping set-up step
#   DOCKER_PACKAGE, JAVA_PACKAGE  package names of the machine's distribution
# and defines
#   cloud_start_logging        start shipping the log
#   cloud_install PACKAGE...   install packages of the machine's distribution
#   cloud_read_token           read the Platform token named by $VMF_TOKEN_SOURCE into PLATFORM_TOKEN
#   cloud_upload FILE URI      upload FILE to URI; non-zero when it failed
#   cloud_download URI         print the object at URI; non-zero when it could not be read
#   cloud_flush_logs           ship what is left before the machine goes away
# Edit the .sh files, then run `npx tsx test/harness/tools.ts sync-launcher` to refresh the
# generated *-script.ts modules.
#
# Overrides for running it outside the cloud (tests, the sandbox). cloud-init runs the launcher as
# root with none of these set, so production always uses the real paths:
#   VMFORGE_ROOT        prefix of every path the script reads or writes (default: empty, i.e. /);
#                       when set, PATH is used as given (no system folders appended)
#   VMFORGE_STOP_GRACE  seconds nextflow gets to stop after a signal before it is killed (default: 60)
set -Eeuo pipefail
umask 077

#@@VMFORGE_SETTINGS@@

ROOT="${VMFORGE_ROOT:-}"
STATE_DIR="$ROOT/var/lib/vmforge"
STOP_GRACE="${VMFORGE_STOP_GRACE:-60}"

export HOME="${HOME:-/root}"
if [[ -z "$ROOT" ]]; then
  export PATH="$STATE_DIR/bin:${PATH:-/usr/bin:/bin}:/usr/local/bin:/usr/sbin:/sbin"
else
  # Outside the cloud the caller's PATH decides which programs (stand-ins) are found.
  export PATH="$STATE_DIR/bin:$PATH"
fi
export NXF_HOME="$STATE_DIR/nextflow-home"
export NXF_ANSI_LOG=false
if [[ -n "$VMF_NXF_VERSION" ]]; then export NXF_VER="$VMF_NXF_VERSION"; fi
# Each Run is a fresh machine: Nextflow keeps its resume cache in the work directory instead of
# the launch directory, so a later Run can resume this one.
export NXF_CLOUDCACHE_PATH="$VMF_CLOUDCACHE_PATH"

EXIT_CODE=""
NXF_PID=""
PIPELINE_STARTED=0
PLATFORM_TOKEN=""
# The set-up step under way; a failure before the pipeline started names it (BootstrapFailed).
STEP=""

#@@VMFORGE_CLOUD@@

MARKER_LOG="${MARKER_LOG:-}"

# The launcher's own lines ($LAUNCHER_LOG may be $LOG_FILE, where everything else goes).
log() { printf '[vmforge %s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$LAUNCHER_LOG"; }

# A machine-readable line: to the launcher's own lines, and to MARKER_LOG when there is one.
marker() {
  printf '%s\n' "$1" >>"$LAUNCHER_LOG"
  if [[ -n "$MARKER_LOG" ]]; then printf '%s\n' "$1" >>"$MARKER_LOG"; fi
}

on_error() {
  local rc=$1 line=$2 cmd=$3
  log "launcher step failed with exit code $rc at line $line: $cmd"
}

on_signal() {
  local name=$1 code=$2
  trap '' INT TERM
  log "received SIG$name, stopping"
  if [[ -n "$NXF_PID" ]] && kill -0 "$NXF_PID" 2>/dev/null; then
    kill -TERM "$NXF_PID" 2>/dev/null || true
    # Bounded wait: nextflow gets STOP_GRACE seconds to stop its tasks, then it is killed.
    local waited=0
    while kill -0 "$NXF_PID" 2>/dev/null && ((waited < STOP_GRACE)); do
      sleep 1
      waited=$((waited + 1))
    done
    kill -KILL "$NXF_PID" 2>/dev/null || true
    wait "$NXF_PID" 2>/dev/null || true
    log "nextflow stopped"
  fi
  EXIT_CODE=$code
  exit "$code"
}

upload() {
  local src=$1 dst=$2
  if [[ ! -f "$src" ]]; then
    log "nothing to upload at $src"
    return 0
  fi
  if cloud_upload "$src" "$dst"; then
    log "uploaded $dst"
  else
    log "upload of $src to $dst failed"
  fi
}

finish() {
  local rc=$?
  set +eE
  trap - ERR
  trap '' INT TERM
  if [[ -n "$EXIT_CODE" ]]; then rc=$EXIT_CODE; fi
  if [[ "$PIPELINE_STARTED" == 1 && -n "$VMF_POST_RUN" ]]; then
    log "running the post-run script"
    printf '%s\n' "$VMF_POST_RUN" >"$STATE_DIR/post-run.sh"
    (cd "$LAUNCH_DIR" && NXF_EXIT_STATUS="$rc" bash "$STATE_DIR/post-run.sh") || log "the post-run script failed with exit code $?"
  fi
  upload "$LAUNCH_DIR/.nextflow.log" "$VMF_ARTIFACTS_URI/nextflow.log"
  # The Nextflow session (6th field of the history line), so a later Run can resume this one by name.
  if [[ -f "$LAUNCH_DIR/.nextflow/history" ]]; then
    awk -F '\t' 'END { print $6 }' "$LAUNCH_DIR/.nextflow/history" >"$STATE_DIR/session-id"
    upload "$STATE_DIR/session-id" "$VMF_SESSION_URI"
  fi
  upload "$LAUNCHER_LOG" "$VMF_ARTIFACTS_URI/launcher.log"
  printf '%s\n' "$rc" >"$STATE_DIR/exit-status"
  local failed_step=""
  if [[ "$PIPELINE_STARTED" == 0 && "$rc" != 0 && -n "$STEP" ]]; then failed_step=$STEP; fi
  if [[ -n "$failed_step" ]]; then printf 'bootstrap-failed=%s\n' "$failed_step" >>"$STATE_DIR/exit-status"; fi
  upload "$STATE_DIR/exit-status" "$VMF_ARTIFACTS_URI/exit-status"
  # The machine-readable end: the failed set-up step (if any), then the exit code, last. Written
  # to the launcher's own lines, never the pipeline's output, where a pipeline could print them.
  if [[ -n "$failed_step" ]]; then marker "VMFORGE_BOOTSTRAP_FAILED=$failed_step"; fi
  marker "VMFORGE_EXIT_CODE=$rc"
  # The log shipping gets the last lines out before the machine goes away.
  cloud_flush_logs
  shutdown -h now || log "shutdown failed with exit code $?; the machine keeps running"
  exit "$rc"
}

# Installed before anything can fail, so that every way out ends in finish (and shutdown).
trap 'on_error "$?" "$LINENO" "$BASH_COMMAND"' ERR
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap finish EXIT

mkdir -p "$LAUNCH_DIR" "$(dirname "$LOG_FILE")" "$(dirname "$LAUNCHER_LOG")" "$STATE_DIR/bin"
if [[ -n "$MARKER_LOG" ]]; then mkdir -p "$(dirname "$MARKER_LOG")"; fi
echo "vmforge: launcher output goes to $LOG_FILE ($LOG_DESTINATION)"
exec >>"$LOG_FILE" 2>&1

ensure_docker() {
  if ! command -v docker >/dev/null 2>&1; then
    log "installing Docker"
    cloud_install "$DOCKER_PACKAGE"
  fi
  systemctl enable --now docker
  local i
  for ((i = 0; i < 60; i++)); do
    if docker info >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "Docker did not become ready"
  return 1
}

ensure_nextflow() {
  if command -v nextflow >/dev/null 2>&1; then return 0; fi
  if ! command -v java >/dev/null 2>&1; then
    log "installing Java"
    cloud_install "$JAVA_PACKAGE"
  fi
  log "installing Nextflow${VMF_NXF_VERSION:+ $VMF_NXF_VERSION}"
  (cd "$STATE_DIR/bin" && curl -fsSL --retry 5 https://get.nextflow.io | bash)
  chmod 755 "$STATE_DIR/bin/nextflow"
}

write_inputs() {
  local cpus=$VMF_CPUS mem_total=$VMF_MEMORY_MIB reserve mem
  if [[ -z "$cpus" ]]; then cpus=$(nproc); fi
  if [[ -z "$mem_total" ]]; then
    mem_total=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
  fi
  # Leave room for the OS, Docker and the log shipping: a tenth of the memory, at least 512 MiB.
  reserve=$((mem_total / 10))
  if ((reserve < 512)); then reserve=512; fi
  mem=$((mem_total - reserve))
  if ((mem < 256)); then mem=$((mem_total / 2)); fi
  {
    printf '%s\n' "$VMF_NXF_CONFIG_BASE"
    printf 'executor {\n    name = %s\n    cpus = %s\n    memory = %s\n}\n' "'local'" "$cpus" "'$mem MB'"
    if [[ -n "$VMF_CE_NXF_CONFIG" ]]; then
      printf '\n// ComputeEnvironment spec.nextflowConfig\n%s\n' "$VMF_CE_NXF_CONFIG"
    fi
    if [[ -n "$VMF_RUN_NXF_CONFIG" ]]; then
      printf '\n// Run spec.pipeline.config\n%s\n' "$VMF_RUN_NXF_CONFIG"
    fi
  } >"$LAUNCH_DIR/nextflow.config"
  printf '%s\n' "$VMF_PARAMS_JSON" >"$LAUNCH_DIR/params.json"
  log "executor sized to $cpus CPUs and $mem MB"
}

read_platform_token() {
  case "$VMF_TOKEN_SOURCE" in
    none) ;;
    user-data)
      log "using the Platform token from user data (the ComputeEnvironment opted in)"
      PLATFORM_TOKEN=$VMF_TOKEN_INLINE
      ;;
    *) cloud_read_token ;;
  esac
  VMF_TOKEN_INLINE=""
}

run_pre_script() {
  if [[ -z "$VMF_PRE_RUN" ]]; then return 0; fi
  log "running the pre-run script"
  printf '%s\n' "$VMF_PRE_RUN" >"$STATE_DIR/pre-run.sh"
  cd "$LAUNCH_DIR"
  # Sourced, in the launcher's own shell, so that what it exports (NXF_VER, NXF_OPTS, ...)
  # reaches nextflow, as on Seqera Platform.
  # shellcheck disable=SC1091
  source "$STATE_DIR/pre-run.sh"
  # A trace the script switched on would print the Platform token with nextflow's command.
  { set +x; } 2>/dev/null
}

# spec.pipeline.resumeFrom: resume the Nextflow session of an earlier Run (its cache is in the work dir).
resume_session() {
  if [[ -z "$VMF_RESUME_FROM_URI" ]]; then return 0; fi
  local id
  id=$(cloud_download "$VMF_RESUME_FROM_URI" | tr -d '[:space:]')
  if [[ ! "$id" =~ ^[0-9a-f-]{36}$ ]]; then
    log "no Nextflow session recorded for Run $VMF_RESUME_FROM_NAME at $VMF_RESUME_FROM_URI"
    return 1
  fi
  VMF_NXF_ARGS+=(-resume "$id")
  log "resuming Nextflow session $id of Run $VMF_RESUME_FROM_NAME"
}

run_pipeline() {
  cd "$LAUNCH_DIR"
  log "starting: nextflow ${VMF_NXF_ARGS[*]}"
  PIPELINE_STARTED=1
  STEP=""
  marker VMFORGE_PIPELINE_STARTED
  # Started in the background so that a signal is handled while the pipeline runs. The token
  # reaches nextflow through its environment only (never its command line).
  if [[ -n "$PLATFORM_TOKEN" ]]; then
    TOWER_ACCESS_TOKEN="$PLATFORM_TOKEN" nextflow "${VMF_NXF_ARGS[@]}" &
  else
    nextflow "${VMF_NXF_ARGS[@]}" &
  fi
  NXF_PID=$!
  local rc=0
  wait "$NXF_PID" || rc=$?
  NXF_PID=""
  EXIT_CODE=$rc
  log "nextflow exited with code $rc"
}

log "vmforge launcher for Run $VMF_RUN_NAMESPACE/$VMF_RUN_NAME ($VMF_RUN_UID)"
STEP=$LOG_STEP
cloud_start_logging
STEP=docker
ensure_docker
STEP=nextflow-download
ensure_nextflow
STEP=inputs
write_inputs
STEP=platform-token
read_platform_token
STEP=resume-session
resume_session
STEP=pre-run-script
run_pre_script
run_pipeline
