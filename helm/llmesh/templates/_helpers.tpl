{{/* Names, labels and the pieces every workload shares. */}}

{{- define "llmesh.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The services a process of this release runs; in allInOne one process runs them all. */}}
{{- define "llmesh.services" -}}
auth,billing,llm,chat,sandbox
{{- end -}}

{{/* The workloads: "llmesh" in allInOne mode, one per service in split mode. */}}
{{- define "llmesh.workloads" -}}
{{- if eq .Values.mode "split" -}}
auth billing llm chat sandbox
{{- else -}}
all
{{- end -}}
{{- end -}}

{{/* The Kubernetes name of a workload ("all" is the release's own name). */}}
{{- define "llmesh.workloadName" -}}
{{- $root := index . 0 -}}{{- $w := index . 1 -}}
{{- if eq $w "all" -}}
{{- include "llmesh.fullname" $root -}}
{{- else -}}
{{- printf "%s-%s" (include "llmesh.fullname" $root) $w -}}
{{- end -}}
{{- end -}}

{{/* The workload that serves a service: itself in split mode, the one process otherwise. */}}
{{- define "llmesh.serviceHost" -}}
{{- $root := index . 0 -}}{{- $svc := index . 1 -}}
{{- if eq $root.Values.mode "split" -}}
{{- include "llmesh.workloadName" (list $root $svc) -}}
{{- else -}}
{{- include "llmesh.workloadName" (list $root "all") -}}
{{- end -}}
{{- end -}}

{{- define "llmesh.labels" -}}
app.kubernetes.io/name: {{ include "llmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "llmesh.selectorLabels" -}}
{{- $root := index . 0 -}}{{- $w := index . 1 -}}
app.kubernetes.io/name: {{ include "llmesh.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $w }}
{{- end -}}

{{- define "llmesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Replicas of a workload. */}}
{{- define "llmesh.replicas" -}}
{{- $root := index . 0 -}}{{- $w := index . 1 -}}
{{- if eq $w "all" -}}
{{- $root.Values.allInOne.replicas -}}
{{- else -}}
{{- (index $root.Values.services $w).replicas -}}
{{- end -}}
{{- end -}}

{{- define "llmesh.resources" -}}
{{- $root := index . 0 -}}{{- $w := index . 1 -}}
{{- if eq $w "all" -}}
{{- toYaml $root.Values.allInOne.resources -}}
{{- else -}}
{{- toYaml (index $root.Values.services $w).resources -}}
{{- end -}}
{{- end -}}

{{/* Whether a workload runs a service. */}}
{{- define "llmesh.runs" -}}
{{- $w := index . 0 -}}{{- $svc := index . 1 -}}
{{- if or (eq $w "all") (eq $w $svc) -}}true{{- end -}}
{{- end -}}

{{/* The peers a service calls when it runs on its own (see services/server/src/lib.rs). */}}
{{- define "llmesh.peersOf" -}}
{{- $svc := . -}}
{{- if eq $svc "auth" -}}billing
{{- else if eq $svc "billing" -}}auth
{{- else if eq $svc "llm" -}}auth billing
{{- else if eq $svc "chat" -}}auth llm
{{- else if eq $svc "sandbox" -}}auth billing
{{- end -}}
{{- end -}}

{{- define "llmesh.serviceTokenSecret" -}}
{{- default (printf "%s-service-token" (include "llmesh.fullname" .)) .Values.secrets.existingServiceTokenSecret -}}
{{- end -}}

{{- define "llmesh.signingKeySecret" -}}
{{- default (printf "%s-signing-key" (include "llmesh.fullname" .)) .Values.secrets.existingSigningKeySecret -}}
{{- end -}}

{{- define "llmesh.providerKeySecret" -}}
{{- default (printf "%s-provider-key" (include "llmesh.fullname" .)) .Values.secrets.existingProviderKeySecret -}}
{{- end -}}

{{- define "llmesh.databaseSecret" -}}
{{- default (printf "%s-database" (include "llmesh.fullname" .)) .Values.database.postgres.existingSecret -}}
{{- end -}}

{{/* Refuses values the chart cannot deploy safely. */}}
{{- define "llmesh.validate" -}}
{{- if not (has .Values.mode (list "allInOne" "split")) -}}
{{- fail (printf "mode must be allInOne or split, not %q" .Values.mode) -}}
{{- end -}}
{{- if eq .Values.database.kind "sqlite" -}}
{{- if ne .Values.mode "allInOne" -}}
{{- fail "database.kind sqlite works only with mode allInOne: a split deployment's processes share one database, so set database.kind postgres" -}}
{{- end -}}
{{- if gt (int .Values.allInOne.replicas) 1 -}}
{{- fail "database.kind sqlite allows one replica (allInOne.replicas 1): for more, use database.kind postgres" -}}
{{- end -}}
{{- else if eq .Values.database.kind "postgres" -}}
{{- if and (not .Values.database.postgres.existingSecret) (not .Values.database.postgres.url) -}}
{{- fail "database.kind postgres needs database.postgres.existingSecret (a Secret with the URL under database.postgres.secretKey) or database.postgres.url" -}}
{{- end -}}
{{- else -}}
{{- fail (printf "database.kind must be postgres or sqlite, not %q" .Values.database.kind) -}}
{{- end -}}
{{- if and .Values.services.llm.autoscaling.enabled (ne .Values.mode "split") -}}
{{- fail "services.llm.autoscaling needs mode split (in allInOne every service scales together)" -}}
{{- end -}}
{{- end -}}

{{/* Environment every llmesh container gets: secrets as LLMESH__ variables. */}}
{{- define "llmesh.env" -}}
- name: LLMESH_CONFIG
  value: /etc/llmesh/config.toml
{{- if eq .Values.database.kind "postgres" }}
- name: LLMESH__DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "llmesh.databaseSecret" . }}
      key: {{ .Values.database.postgres.secretKey }}
{{- end }}
- name: LLMESH__PEERS__SERVICE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "llmesh.serviceTokenSecret" . }}
      key: service-token
{{- with .Values.models.indexUrl }}
- name: PIP_INDEX_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The pod-level settings every llmesh pod shares. */}}
{{- define "llmesh.podCommon" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
{{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* config.toml of one workload ("migrate" for the Job: database and keys only). */}}
{{- define "llmesh.config" -}}
{{- $root := index . 0 -}}{{- $w := index . 1 -}}
{{- $port := int $root.Values.service.port -}}
{{- $server := dict "bind" (printf "0.0.0.0:%d" $port) -}}
{{- if not (or (eq $w "all") (eq $w "chat")) -}}
{{- $_ := set $server "web_dir" "none" -}}
{{- end -}}
{{- if or (eq $w "all") (eq $w "auth") -}}
{{- $_ := set $server "reflection" "all" -}}
{{- end -}}
{{- $set := dict "server" $server -}}
{{- if eq $root.Values.database.kind "sqlite" -}}
{{- $_ := set $set "database" (dict "url" "sqlite:///var/lib/llmesh/data/llmesh.db") -}}
{{- end -}}
{{- $_ := set $set "auth" (dict "signing_key_file" "/etc/llmesh/keys/signing-key.pem") -}}
{{- $_ := set $set "llm" (dict "models_dir" "/var/lib/llmesh/models" "pull_defaults" false "provider_key_file" "/etc/llmesh/provider-key/provider.key") -}}
{{- $_ := set $set "sandbox" (dict "runtimes_dir" "/var/lib/llmesh/runtimes") -}}
{{- if ne $w "all" -}}
{{- $peers := dict -}}
{{- $needs := splitList " " (include "llmesh.peersOf" $w) -}}
{{- if eq $w "migrate" -}}{{- $needs = list -}}{{- end -}}
{{- range $p := $needs -}}
{{- $_ := set $peers (printf "%s_url" $p) (printf "http://%s:%d" (include "llmesh.serviceHost" (list $root $p)) $port) -}}
{{- end -}}
{{- $_ := set $set "peers" $peers -}}
{{- end -}}
{{- include "llmesh.toml" (list "" (mergeOverwrite (deepCopy $root.Values.config) $set)) -}}
{{- end -}}

{{/*
A map as TOML. Helm reads every number of a values file as a float, and its own toToml
writes 8 as 8.0, which llmesh's integer settings refuse: whole numbers are written as
integers here. Arrays of tables are not config that llmesh has.
*/}}
{{- define "llmesh.toml" -}}
{{- $prefix := index . 0 -}}{{- $map := index . 1 -}}
{{- range $k, $v := $map -}}
{{- if not (kindIs "map" $v) }}
{{ include "llmesh.tomlKey" $k }} = {{ include "llmesh.tomlValue" $v }}
{{- end -}}
{{- end -}}
{{- range $k, $v := $map -}}
{{- if kindIs "map" $v -}}
{{- $name := ternary (include "llmesh.tomlKey" $k) (printf "%s.%s" $prefix (include "llmesh.tomlKey" $k)) (eq $prefix "") }}

[{{ $name }}]
{{- include "llmesh.toml" (list $name $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llmesh.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "llmesh.tomlValue" -}}
{{- if kindIs "string" . -}}{{ toJson . }}
{{- else if kindIs "bool" . -}}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if kindIs "slice" . -}}
[{{- range $i, $e := . -}}{{- if $i -}}, {{ end -}}{{- if kindIs "map" $e -}}{{- fail "config: arrays of tables are not supported" -}}{{- end -}}{{ include "llmesh.tomlValue" $e }}{{- end -}}]
{{- else if kindIs "invalid" . -}}{{- fail "config: a null value has no TOML form; leave the key out instead" -}}
{{- else -}}{{ . }}
{{- end -}}
{{- end -}}
