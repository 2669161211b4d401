{{/* vim: set filetype=mustache: */}}
{{/*
Expand the name of the chart.
*/}}
{{- define "s3cse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Create a default fully qualified app name.
Truncated at 52 characters, not 63: a CronJob's name may be at most 52 characters (its Jobs
get an 11-character suffix), and Job and CronJob share this name.
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "s3cse.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "s3cse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Common labels.
*/}}
{{- define "s3cse.labels" -}}
helm.sh/chart: {{ include "s3cse.chart" . }}
{{ include "s3cse.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels. The component label keeps the Helm test pod out of the PodMonitor.
*/}}
{{- define "s3cse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "s3cse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ ternary "audit" "rekey" (eq .Values.mode "audit") }}
{{- end -}}

{{/*
Name of the ServiceAccount to use.
*/}}
{{- define "s3cse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ default (include "s3cse.fullname" .) .Values.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{/*
Container image reference; a digest wins over the tag.
*/}}
{{- define "s3cse.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/*
Name of the state PVC (created or existing).
*/}}
{{- define "s3cse.stateClaimName" -}}
{{- if .Values.persistence.existingClaim -}}
{{ .Values.persistence.existingClaim }}
{{- else -}}
{{ include "s3cse.fullname" . }}-state
{{- end -}}
{{- end -}}

{{/*
"true" when this release renders a sharded (Indexed) Job, else "".
*/}}
{{- define "s3cse.sharded" -}}
{{- if and (eq .Values.mode "job") (gt (int .Values.shards) 1) -}}true{{- end -}}
{{- end -}}

{{/*
"true" when the job table is a shared PostgreSQL database (state.backend=postgres), else "".
Not for mode=audit, which keeps no state.
*/}}
{{- define "s3cse.postgres" -}}
{{- if and (eq .Values.state.backend "postgres") (ne .Values.mode "audit") -}}true{{- end -}}
{{- end -}}

{{/*
Path of the SQLite state file. Sharded pods name theirs after their index: with
sharding.state=singleNode they share one directory; with ephemeral volumes the name only keeps
shards' files apart if someone copies them together. $(JOB_COMPLETION_INDEX) is expanded by
the kubelet from the container's env (set explicitly in the pod template).
*/}}
{{- define "s3cse.statePath" -}}
{{- if include "s3cse.sharded" . -}}
{{ .Values.persistence.mountPath }}/state-$(JOB_COMPLETION_INDEX).db
{{- else -}}
{{ .Values.persistence.mountPath }}/state.db
{{- end -}}
{{- end -}}

{{/*
Checks the schema can't express (or can't word helpfully). Included by every workload template.
*/}}
{{- define "s3cse.validate" -}}
{{- if and (ne .Values.mode "job") (gt (int .Values.shards) 1) -}}
{{- fail "shards > 1 needs mode: job (an Indexed Job); a CronJob runs one pod per schedule" -}}
{{- end -}}
{{- if and (eq .Values.mode "audit") .Values.metrics.prometheusRule.enabled (not .Values.metrics.pushgateway.url) -}}
{{- fail "mode: audit serves no /metrics: its alert rules need metrics.pushgateway.url (the audit gauges reach Prometheus only through the Pushgateway)" -}}
{{- end -}}
{{- if and (or .Values.legacyKeys.aesKeys .Values.legacyKeys.rsaKeys) (not .Values.legacyKeys.existingSecret) -}}
{{- fail "legacyKeys.aesKeys/rsaKeys name keys of a Secret: set legacyKeys.existingSecret" -}}
{{- end -}}
{{- if and (eq .Values.state.backend "postgres") (not .Values.state.postgres.secretName) -}}
{{- fail "state.backend: postgres reads the database URL from a Secret: set state.postgres.secretName" -}}
{{- end -}}
{{- if and (eq .Values.state.backend "postgres") (gt (int .Values.shards) 1) -}}
{{- fail "state.backend: postgres shares one queue between pods: set workers, not shards" -}}
{{- end -}}
{{- if and (ne .Values.state.backend "postgres") (gt (int .Values.workers) 1) -}}
{{- fail "workers > 1 needs state.backend: postgres (SQLite has one writer: use shards)" -}}
{{- end -}}
{{- if and .Values.metrics.podMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.podMonitor.enabled needs metrics.enabled (the pod must serve /metrics)" -}}
{{- end -}}
{{- if and (include "s3cse.sharded" .) (eq .Values.sharding.state "singleNode") (not .Values.persistence.enabled) -}}
{{- fail "sharding.state: singleNode shares the state PVC: set persistence.enabled" -}}
{{- end -}}
{{- /* After the stop timeout s3cse needs up to 15 s: release its leases (0.2 s), push to the
       Pushgateway (at most 8 s after a stop), let a last scrape finish (at most 5 s). */}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (add (int .Values.rekey.stopTimeoutSeconds) 15) -}}
{{- fail "terminationGracePeriodSeconds must be at least rekey.stopTimeoutSeconds + 15 (s3cse releases its objects and flushes its metrics after the stop timeout)" -}}
{{- end -}}
{{- end -}}

{{/*
Arguments of `s3cse rekey`, one YAML list item per line. Keep flag names in step with
`s3cse help rekey` (tests/chart/test_chart.py checks them against the real binary).
*/}}
{{- define "s3cse.args" -}}
{{- if eq .Values.mode "audit" -}}
{{ include "s3cse.auditArgs" . }}
{{- else -}}
{{ include "s3cse.rekeyArgs" . }}
{{- end -}}
{{- end -}}

{{/*
Arguments of `s3cse audit` (mode=audit): the bucket, prefix and target key of `rekey`, no state,
no legacy keys, no /metrics server; the gauges go to the Pushgateway when one is set. Keep flag
names in step with `s3cse help audit` (tests/chart/test_chart.py checks them).
*/}}
{{- define "s3cse.auditArgs" -}}
- audit
- {{ printf "s3://%s%s" .Values.rekey.bucket (ternary (printf "/%s" .Values.rekey.prefix) "" (ne .Values.rekey.prefix "")) | quote }}
- --kms-key-id
- {{ .Values.rekey.kmsKeyId | quote }}
- --target-format
- {{ .Values.rekey.targetFormat | default "v2" | quote }}
{{- if .Values.audit.versions }}
- --versions
{{- end }}
{{- if .Values.audit.json }}
- --json
{{- end }}
{{- with .Values.audit.concurrency }}
- --concurrency
- {{ . | quote }}
{{- end }}
{{- if not (kindIs "invalid" .Values.audit.maxListed) }}
- --max-listed
- {{ int .Values.audit.maxListed | toString | quote }}
{{- end }}
{{- with .Values.rekey.s3Rps }}
- --s3-rps
- {{ . | quote }}
{{- end }}
{{- with .Values.metrics.pushgateway.url }}
- --pushgateway
- {{ . | quote }}
{{- end }}
- --log-format
- {{ .Values.rekey.logFormat | quote }}
{{- with .Values.aws.endpointUrl }}
- --endpoint-url
- {{ . | quote }}
{{- end }}
{{- if .Values.aws.pathStyle }}
- --path-style
{{- end }}
{{- range .Values.audit.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
Arguments of `s3cse rekey` (mode=job, cronjob).
*/}}
{{- define "s3cse.rekeyArgs" -}}
- rekey
- {{ printf "s3://%s%s" .Values.rekey.bucket (ternary (printf "/%s" .Values.rekey.prefix) "" (ne .Values.rekey.prefix "")) | quote }}
{{- if not (include "s3cse.postgres" .) }}
- --state
- {{ include "s3cse.statePath" . | quote }}
{{- end }}
- --kms-key-id
- {{ .Values.rekey.kmsKeyId | quote }}
{{- range .Values.legacyKeys.aesKeys }}
- --aes-key-file
- {{ printf "%s/%s" $.Values.legacyKeys.mountPath . | quote }}
{{- end }}
{{- range .Values.legacyKeys.rsaKeys }}
- --rsa-key-file
- {{ printf "%s/%s" $.Values.legacyKeys.mountPath . | quote }}
{{- end }}
{{- range $k, $v := .Values.rekey.encryptionContext }}
- --context
- {{ printf "%s=%s" $k (toString $v) | quote }}
{{- end }}
{{- with .Values.rekey.concurrency }}
- --concurrency
- {{ . | quote }}
{{- end }}
{{- with .Values.rekey.maxBufferMib }}
- --max-buffer-mib
- {{ . | quote }}
{{- end }}
{{- if .Values.rekey.dryRun }}
- --dry-run
{{- end }}
{{- if .Values.rekey.reencrypt }}
- --reencrypt
{{- end }}
- --target-format
- {{ .Values.rekey.targetFormat | default "v2" | quote }}
{{- if not .Values.rekey.verify }}
- --no-verify
{{- end }}
{{- with .Values.rekey.s3Rps }}
- --s3-rps
- {{ . | quote }}
{{- end }}
{{- with .Values.rekey.kmsRps }}
- --kms-rps
- {{ . | quote }}
{{- end }}
{{- range .Values.rekey.sourceKmsKeys }}
- --source-kms-key
- {{ . | quote }}
{{- end }}
{{- range .Values.rekey.sourceKmsAccounts }}
- --source-kms-account
- {{ . | toString | quote }}
{{- end }}
{{- with .Values.rekey.maxAttempts }}
- --max-attempts
- {{ . | quote }}
{{- end }}
{{- with .Values.rekey.objectTimeoutSeconds }}
- --object-timeout
- {{ . | quote }}
{{- end }}
{{- with .Values.rekey.noncurrent }}
- --noncurrent
- {{ . | quote }}
{{- end }}
{{- if include "s3cse.sharded" . }}
- --shards
- {{ .Values.shards | quote }}
{{- end }}
{{- if .Values.metrics.enabled }}
- --metrics-addr
- {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
{{- end }}
{{- with .Values.metrics.pushgateway.url }}
- --pushgateway
- {{ . | quote }}
{{- end }}
- --stop-timeout
- {{ int .Values.rekey.stopTimeoutSeconds | toString | quote }}
- --log-format
- {{ .Values.rekey.logFormat | quote }}
{{- with .Values.aws.endpointUrl }}
- --endpoint-url
- {{ . | quote }}
{{- end }}
{{- if .Values.aws.pathStyle }}
- --path-style
{{- end }}
{{- range .Values.rekey.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
Job spec fields shared by mode=job and the CronJob's jobTemplate (everything but the template).
podFailurePolicy needs restartPolicy Never, which the pod template sets.
*/}}
{{- define "s3cse.jobSpecFields" -}}
{{- if include "s3cse.sharded" . }}
completionMode: Indexed
completions: {{ int .Values.shards }}
parallelism: {{ int .Values.shards }}
backoffLimitPerIndex: {{ int .Values.job.backoffLimitPerIndex }}
{{- if not (kindIs "invalid" .Values.job.maxFailedIndexes) }}
maxFailedIndexes: {{ int .Values.job.maxFailedIndexes }}
{{- end }}
{{- else }}
{{- if include "s3cse.postgres" . }}
{{- /* The work-queue pattern: no completions; the Job is complete once one pod has succeeded
       and all have ended, and every pod ends when the shared queue is empty. */}}
parallelism: {{ int .Values.workers }}
{{- end }}
backoffLimit: {{ int .Values.job.backoffLimit }}
{{- end }}
{{- if not (kindIs "invalid" .Values.job.activeDeadlineSeconds) }}
activeDeadlineSeconds: {{ int .Values.job.activeDeadlineSeconds }}
{{- end }}
{{- if not (kindIs "invalid" .Values.job.ttlSecondsAfterFinished) }}
ttlSecondsAfterFinished: {{ int .Values.job.ttlSecondsAfterFinished }}
{{- end }}
podFailurePolicy:
  rules:
    {{- /* An audit's exit 1 is its verdict (objects remain): a retry would say the same. */}}
    {{- $codes := .Values.job.failJobOnExitCodes | default list }}
    {{- if and (eq .Values.mode "audit") (not (has 1 $codes)) (not (has 1.0 $codes)) }}
    {{- $codes = prepend $codes 1 }}
    {{- end }}
    {{- with $codes }}
    - action: FailJob
      onExitCodes:
        containerName: s3cse
        operator: In
        values:
          {{- range . }}
          - {{ int . }}
          {{- end }}
    {{- end }}
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
{{- end -}}

{{/*
Pod template (metadata + spec) shared by the Job and the CronJob.
*/}}
{{- define "s3cse.podTemplate" -}}
metadata:
  labels:
    {{- include "s3cse.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  restartPolicy: Never
  # SIGTERM -> rekey.stopTimeoutSeconds for the objects in flight -> release + metrics flush ->
  # exit, all before SIGKILL.
  terminationGracePeriodSeconds: {{ int .Values.terminationGracePeriodSeconds }}
  serviceAccountName: {{ include "s3cse.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: s3cse
      image: {{ include "s3cse.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command:
        - /usr/local/bin/s3cse
      args:
        {{- include "s3cse.args" . | nindent 8 }}
      env:
        {{- if include "s3cse.sharded" . }}
        # The Job controller injects this too; declaring it here guarantees that the
        # $(JOB_COMPLETION_INDEX) in --state expands.
        - name: JOB_COMPLETION_INDEX
          valueFrom:
            fieldRef:
              fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
        {{- end }}
        {{- if include "s3cse.postgres" . }}
        # --state: the database URL, password included, from the Secret (never an argument).
        - name: S3CSE_STATE
          valueFrom:
            secretKeyRef:
              name: {{ .Values.state.postgres.secretName }}
              key: {{ .Values.state.postgres.secretKey }}
        {{- end }}
        {{- with .Values.aws.region }}
        - name: AWS_REGION
          value: {{ . | quote }}
        {{- end }}
        # SQLite and the binary write temp files here; the root filesystem is read-only.
        - name: TMPDIR
          value: /tmp
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if and .Values.metrics.enabled (ne .Values.mode "audit") }}
      ports:
        - name: metrics
          containerPort: {{ int .Values.metrics.port }}
          protocol: TCP
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        {{- if and (ne .Values.mode "audit") (not (include "s3cse.postgres" .)) }}
        - name: state
          mountPath: {{ .Values.persistence.mountPath }}
        {{- end }}
        - name: tmp
          mountPath: /tmp
        {{- if and .Values.legacyKeys.existingSecret (ne .Values.mode "audit") }}
        - name: legacy-keys
          mountPath: {{ .Values.legacyKeys.mountPath }}
          readOnly: true
        {{- end }}
  volumes:
    {{- if eq .Values.mode "audit" }}
    {{- /* An audit keeps no state and reads no legacy key. */}}
    {{- else if include "s3cse.postgres" . }}
    {{- /* The state is in PostgreSQL: no volume. */}}
    {{- else if and (include "s3cse.sharded" .) (eq .Values.sharding.state "ephemeral") }}
    # One fresh ReadWriteOnce volume per pod, deleted with the pod: a retried shard starts
    # from empty state (see sharding.state in values.yaml).
    - name: state
      ephemeral:
        volumeClaimTemplate:
          metadata:
            labels:
              {{- include "s3cse.selectorLabels" . | nindent 14 }}
          spec:
            accessModes:
              - ReadWriteOnce
            {{- with .Values.persistence.storageClassName }}
            storageClassName: {{ . | quote }}
            {{- end }}
            resources:
              requests:
                storage: {{ .Values.persistence.size | quote }}
    {{- else if .Values.persistence.enabled }}
    - name: state
      persistentVolumeClaim:
        claimName: {{ include "s3cse.stateClaimName" . }}
    {{- else }}
    - name: state
      emptyDir: {}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: {{ .Values.tmpSizeLimit | quote }}
    {{- if ne .Values.mode "audit" }}
    {{- with .Values.legacyKeys.existingSecret }}
    - name: legacy-keys
      secret:
        secretName: {{ . }}
        # Readable by the fsGroup only; the files never reach env vars or logs.
        defaultMode: 0440
        items:
          {{- range (concat $.Values.legacyKeys.aesKeys $.Values.legacyKeys.rsaKeys | uniq) }}
          - key: {{ . }}
            path: {{ . }}
          {{- end }}
    {{- end }}
    {{- end }}
  {{- $singleNode := and (include "s3cse.sharded" .) (eq .Values.sharding.state "singleNode") }}
  {{- if or .Values.affinity $singleNode }}
  affinity:
    {{- $affinity := deepCopy (.Values.affinity | default dict) }}
    {{- if $singleNode }}
    {{- /* All shards on one node: they share one ReadWriteOnce PVC. The first pod matches its
           own term, which Kubernetes allows when no other pod matches yet. */}}
    {{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "s3cse.selectorLabels" . | fromYaml)) }}
    {{- $podAffinity := get $affinity "podAffinity" | default dict }}
    {{- $required := get $podAffinity "requiredDuringSchedulingIgnoredDuringExecution" | default list }}
    {{- $_ := set $podAffinity "requiredDuringSchedulingIgnoredDuringExecution" (append $required $term) }}
    {{- $_ := set $affinity "podAffinity" $podAffinity }}
    {{- end }}
    {{- toYaml $affinity | nindent 4 }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
