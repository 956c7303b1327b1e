# ---- the Azure part of the launcher (src/cloud/azure/launcher.sh) ----
# An Azure VM with the ComputeEnvironment's user-assigned identity: tokens come from the instance
# metadata service for that identity (by client ID); the log is shipped to the CE's data
# collection rule through the Logs Ingestion API in batches, retried, never blocking the
# pipeline, its two streams (the output, the launcher's own lines) numbered in one sequence in
# the order they were written; uploads and downloads go to blob storage with the identity's
# token; the Platform token can come from a Key Vault secret read with the identity.
# Overrides for running it outside Azure (tests, the sandbox):
#   VMFORGE_IMDS_ENDPOINT      base URL of the instance metadata service (default: VMF_IMDS)
#   VMFORGE_SHIP_INTERVAL      seconds between two rounds of log batches (default: 5)
#   VMFORGE_KEYVAULT_ENDPOINT  replaces https://<vault>.vault.azure.net in the token's secret URI
#   VMFORGE_KEYVAULT_WAIT      seconds a Key Vault 403 is retried for (default: 600), as a new
#                              grant to the identity takes minutes to take effect
#   VMFORGE_STORAGE_WAIT       the same for blob storage's 403 (default: 600), over all uploads
#                              and downloads of the launcher together
#   VMFORGE_FLUSH_WAIT         seconds the last log lines are tried for before the VM shuts down
#                              (default: 120)
LAUNCH_DIR="$STATE_DIR/launch"
LOG_FILE="$ROOT/var/log/vmforge/run.log"
LAUNCHER_LOG="$ROOT/var/log/vmforge/launcher.log"
LOG_DESTINATION="Log Analytics table $VMF_LOG_TABLE, RunUid $VMF_RUN_UID"
LOG_STEP=log-shipping
DOCKER_PACKAGE=docker.io
JAVA_PACKAGE=openjdk-21-jre-headless
VMF_IMDS="${VMFORGE_IMDS_ENDPOINT:-$VMF_IMDS}"
SHIP_INTERVAL="${VMFORGE_SHIP_INTERVAL:-5}"
# At most this many lines per Logs Ingestion call (Azure takes at most 1 MB per call).
SHIP_BATCH=500
SEQ_FILE="$STATE_DIR/ship-seq"
ORDER_FILE="$STATE_DIR/ship-order"
SHIPPER_PID=""
ALL_WRITTEN=0
FLUSH_WAIT="${VMFORGE_FLUSH_WAIT:-120}"

cloud_install() {
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# An access token of the VM's identity for a resource (printed), from the instance metadata service.
imds_token() {
  local answer
  answer=$(curl -sf -H 'Metadata: true' --max-time 10 --retry 3 \
    "$VMF_IMDS/metadata/identity/oauth2/token?api-version=2018-02-01&resource=$1&client_id=$VMF_CLIENT_ID") || return 1
  sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p' <<<"$answer"
}

# curl with a bearer token: `with_bearer TOKEN CURL-ARGS...`. The Authorization header reaches
# curl on its standard input (-H @-), never on its command line, which every process of the VM
# can read (/proc/<pid>/cmdline); printf is a shell builtin, so no process holds it either.
with_bearer() {
  local tok=$1
  shift
  printf 'Authorization: Bearer %s\n' "$tok" | curl -H @- "$@"
}

# A call with the identity's token for a resource that a new grant may not reach yet:
# `patient_call WAIT WHAT RESOURCE OUT CURL-ARGS...` (the answer's body goes to file OUT; WHAT
# names the service and what was asked, for the log). A 403 is asked again every 10 s until WAIT
# seconds of 403 were spent on RESOURCE's service (counted over every call, so a grant that never comes
# delays the launcher once, not at each call); a failure that may pass (no answer, 408, 429, 5xx)
# is asked again 3 times; anything else ends it at once. Non-zero, naming the last status in the
# log, unless the service answered 2xx.
patient_call() {
  local wait_for=$1 what=$2 resource=$3 out=$4 tok status step=10 tries=0 spent
  local spent_file="$STATE_DIR/refused-${resource//[^a-z]/}"
  shift 4
  if ((wait_for < step)); then step=1; fi
  if ! tok=$(imds_token "$resource"); then
    log "no token of the VM identity for $resource, so $what was not asked"
    return 1
  fi
  while :; do
    status=$(with_bearer "$tok" -s -o "$out" -w '%{http_code}' "$@") || status=000
    case "$status" in
      2??) return 0 ;;
      403)
        spent=$(cat "$spent_file" 2>/dev/null || echo 0)
        if ((spent >= wait_for)); then break; fi
        log "$what: refused (403); the identity's access may still be propagating, asking again in $step s"
        echo $((spent + step)) >"$spent_file"
        ;;
      000 | 408 | 429 | 5??)
        if ((tries >= 3)); then break; fi
        tries=$((tries + 1))
        log "$what: failed (HTTP $status), asking again in $step s"
        ;;
      *) break ;;
    esac
    sleep "$step"
  done
  log "$what: gave up, answered HTTP $status"
  return 1
}

# A blob URL from az://container/path.
blob_url() { printf '%s/%s' "$VMF_BLOB" "${1#az://}"; }

cloud_upload() {
  patient_call "${VMFORGE_STORAGE_WAIT:-600}" "blob storage, upload of $2" "https://storage.azure.com" /dev/null \
    --max-time 300 -X PUT -H 'x-ms-version: 2021-08-06' -H 'x-ms-blob-type: BlockBlob' --data-binary "@$1" "$(blob_url "$2")"
}

cloud_download() {
  local body rc=0
  body=$(mktemp)
  patient_call "${VMFORGE_STORAGE_WAIT:-600}" "blob storage, download of $1" "https://storage.azure.com" "$body" \
    --max-time 120 -H 'x-ms-version: 2021-08-06' "$(blob_url "$1")" || rc=$?
  if ((rc == 0)); then cat "$body"; fi
  rm -f "$body"
  return "$rc"
}

cloud_read_token() {
  case "$VMF_TOKEN_SOURCE" in
    keyvault)
      log "reading the Platform token from Key Vault secret $VMF_TOKEN_REF"
      local url=$VMF_TOKEN_REF answer rc=0
      if [[ -n "${VMFORGE_KEYVAULT_ENDPOINT:-}" ]]; then url="$VMFORGE_KEYVAULT_ENDPOINT/${url#https://*/}"; fi
      answer=$(mktemp)
      patient_call "${VMFORGE_KEYVAULT_WAIT:-600}" "Key Vault, secret $VMF_TOKEN_REF" "$VMF_KEYVAULT_RESOURCE" "$answer" \
        --max-time 30 "$url?api-version=7.4" || rc=$?
      if ((rc != 0)); then
        rm -f "$answer"
        return 1
      fi
      PLATFORM_TOKEN=$(sed -n 's/.*"value" *: *"\([^"]*\)".*/\1/p' "$answer")
      rm -f "$answer"
      if [[ -z "$PLATFORM_TOKEN" ]]; then
        log "the Key Vault secret $VMF_TOKEN_REF has no value"
        return 1
      fi
      ;;
    *)
      log "unknown Platform token source $VMF_TOKEN_SOURCE"
      return 1
      ;;
  esac
}

json_escape() { sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' -e 's/\r//g' | tr -d '\000-\010\013-\037\177'; }

# Lines in file $1 (0 when there is none).
line_count() { if [[ -f "$1" ]]; then wc -l <"$1"; else echo 0; fi; }

# Before each of the launcher's own lines (log, marker): how many lines the launcher's file and
# the output file held then, so the two are shipped in the order they were written. A line written
# some other way counts as written with the own line before it.
note_order() { printf '%s %s\n' "$(line_count "$LAUNCHER_LOG")" "$(line_count "$LOG_FILE")" >>"$ORDER_FILE"; }

# log and marker (defined by the core after this part) each note the order first.
note_order_of_own_lines() {
  local f
  for f in log marker; do
    if ! declare -F "$f" >/dev/null || declare -F "core_$f" >/dev/null; then continue; fi
    eval "core_$(declare -f "$f")"
    eval "$f() { note_order; core_$f \"\$@\"; }"
  done
}

# Ships the next batch of lines of both files (the output as stream pipeline, the launcher's own
# lines as stream launcher) in the order they were written, numbered on from the last Seq (the
# offsets are kept in files, so a later pass goes on where this one stopped). Non-zero when there
# was nothing to ship or it failed (then the same lines are tried again next round).
ship() {
  local p_off l_off p_total l_total p_n l_n seq tok code now taken
  p_off=$(cat "$STATE_DIR/ship-pipeline" 2>/dev/null || echo 0)
  l_off=$(cat "$STATE_DIR/ship-launcher" 2>/dev/null || echo 0)
  # The launcher's lines counted first, so every output line written before one of them is counted
  # too. The output may also hold lines written after a launcher line this count missed: those
  # wait for it (see below).
  l_total=$(line_count "$LAUNCHER_LOG")
  p_total=$(line_count "$LOG_FILE")
  ((p_total > p_off || l_total > l_off)) || return 1
  p_n=$((p_total - p_off))
  l_n=$((l_total - l_off))
  if ((p_n > SHIP_BATCH)); then p_n=$SHIP_BATCH; fi
  if ((l_n > SHIP_BATCH)); then l_n=$SHIP_BATCH; fi
  seq=$(cat "$SEQ_FILE" 2>/dev/null || echo 0)
  now=$(date -u +%FT%T.%3NZ)
  if ((p_n > 0)); then tail -n +"$((p_off + 1))" "$LOG_FILE" | head -n "$p_n" | json_escape; fi >"$STATE_DIR/ship-p"
  if ((l_n > 0)); then tail -n +"$((l_off + 1))" "$LAUNCHER_LOG" | head -n "$l_n" | json_escape; fi >"$STATE_DIR/ship-l"
  touch "$ORDER_FILE"
  # A launcher line goes once every output line written before it went (its order entry: the last
  # one noted before it was written); an output line goes once every launcher line noted before it
  # went, so none overtakes a launcher line written after the count above (the first entry past
  # the counted lines bounds the output taken). Prints how many of each it took.
  taken=$(awk -v uid="$VMF_RUN_UID" -v t="$now" -v s="$seq" -v poff="$p_off" -v loff="$l_off" -v max="$SHIP_BATCH" -v written="$ALL_WRITTEN" \
    -v body="$STATE_DIR/ship-body.json" '
      FILENAME == ARGV[1] { lc[++ne] = $1; pc[ne] = $2; next }
      FILENAME == ARGV[2] { pl[++np] = $0; next }
      FILENAME == ARGV[3] { ll[++nl] = $0; next }
      function row(stream, line) {
        k++
        printf "%s{\"TimeGenerated\":\"%s\",\"RunUid\":\"%s\",\"Stream\":\"%s\",\"Seq\":%d,\"Line\":\"%s\"}", (k > 1 ? "," : ""), t, uid, stream, s + k, line >body
      }
      END {
        e = 0
        for (j = 1; j <= nl; j++) {
          while (e < ne && lc[e + 1] < loff + j) e++
          pos[j] = e > 0 ? pc[e] : 0
        }
        for (x = 1; x <= ne && !written; x++) if (lc[x] >= loff + nl) { if (pc[x] - poff < np) np = pc[x] > poff ? pc[x] - poff : 0; break }
        printf "[" >body
        i = 1; j = 1; k = 0
        while (k < max) {
          if (j <= nl && pos[j] <= poff + i - 1) row("launcher", ll[j++])
          else if (i <= np) row("pipeline", pl[i++])
          else break
        }
        printf "]" >body
        print (i - 1) " " (j - 1)
      }' "$ORDER_FILE" "$STATE_DIR/ship-p" "$STATE_DIR/ship-l")
  p_n=${taken% *}
  l_n=${taken#* }
  # Only output waiting for a launcher line being written: it goes next round.
  ((p_n + l_n > 0)) || return 1
  tok=$(imds_token "https://monitor.azure.com") || return 1
  code=$(with_bearer "$tok" -s -o /dev/null -w '%{http_code}' --max-time 20 -X POST \
    -H 'Content-Type: application/json' --data-binary "@$STATE_DIR/ship-body.json" \
    "$VMF_DCE/dataCollectionRules/$VMF_DCR/streams/$VMF_STREAM?api-version=2023-01-01") || code=000
  case "$code" in
    2??) ;;
    # Refused as it is (it would be refused again): passed over, so the lines after it still go out.
    400 | 413) printf '[vmforge] a log batch of %s lines was refused (HTTP %s) and is left out\n' "$((p_n + l_n))" "$code" >>"$LAUNCHER_LOG" ;;
    *) return 1 ;;
  esac
  echo $((seq + p_n + l_n)) >"$SEQ_FILE"
  echo $((p_off + p_n)) >"$STATE_DIR/ship-pipeline"
  echo $((l_off + l_n)) >"$STATE_DIR/ship-launcher"
}

# Every line written so far (a bounded number of calls; stops at the first failure).
ship_all() {
  local i
  for ((i = 0; i < 200; i++)); do
    ship || return 0
  done
}

shipper() {
  set +eE
  trap - ERR
  local last
  while :; do
    # Seen before shipping, so the lines written before the stop request (the exit line) go out.
    last=0
    if [[ -f "$STATE_DIR/stop-shipping" ]]; then last=1; fi
    ship_all
    if [[ "$last" == 1 ]]; then break; fi
    sleep "$SHIP_INTERVAL"
  done
}

cloud_start_logging() {
  rm -f "$STATE_DIR/stop-shipping"
  note_order_of_own_lines
  shipper &
  SHIPPER_PID=$!
  log "shipping the log to $VMF_DCE (data collection rule $VMF_DCR)"
}

# Zero when file $1 has lines stream $2 has not shipped (nor passed over) yet.
lines_left() {
  [[ -f "$1" ]] && (($(wc -l <"$1") > $(cat "$STATE_DIR/ship-$2" 2>/dev/null || echo 0)))
}

cloud_flush_logs() {
  touch "$STATE_DIR/stop-shipping"
  if [[ -n "$SHIPPER_PID" ]]; then wait "$SHIPPER_PID" 2>/dev/null; fi
  # Nothing is being written any more: an order entry whose line never came holds nothing back.
  ALL_WRITTEN=1
  # Whatever the shipper left (it may have been stopped with the launcher), the exit line with it:
  # tried again for up to FLUSH_WAIT seconds (a Logs Ingestion grant may still be propagating, or
  # the service may fail for a moment), then the VM shuts down whatever is left.
  local waited=0 step=5
  if ((FLUSH_WAIT < step)); then step=1; fi
  while :; do
    ship_all
    if ! lines_left "$LOG_FILE" pipeline && ! lines_left "$LAUNCHER_LOG" launcher; then break; fi
    if ((waited >= FLUSH_WAIT)); then break; fi
    sleep "$step"
    waited=$((waited + step))
  done
}
# ---- end of the Azure part ----
