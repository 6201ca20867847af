{{/* Names, labels and the TOML writer the chart's templates share. */}}

{{- define "titan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; a prefix of every object's name (at most 40 characters, so that pod names, which add
the StatefulSet's ordinal, and the longer derived names stay under 63). */}}
{{- define "titan.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "titan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "titan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "titan.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "titan.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: titan
titan.io/cell: {{ .Values.cell.name }}
{{- end -}}

{{/* The members' StatefulSet and the headless Service that gives each a DNS name. */}}
{{- define "titan.members" -}}
{{- include "titan.fullname" . -}}
{{- end -}}

{{- define "titan.peersService" -}}
{{- printf "%s-peers" (include "titan.fullname" .) -}}
{{- end -}}

{{- define "titan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "titan.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "titan.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Each member's DNS name through the headless Service, in member order (id 1 is pod 0), space separated. */}}
{{- define "titan.memberHosts" -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.cell.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s.%s.svc.%s" (include "titan.members" $) $i (include "titan.peersService" $) $.Release.Namespace $.Values.clusterDomain) -}}
{{- end -}}
{{- join " " $hosts -}}
{{- end -}}

{{/* The members' API addresses as agents reach them: HOST:PORT,... (tried in turn when one is down). */}}
{{- define "titan.cellAddr" -}}
{{- $addrs := list -}}
{{- range splitList " " (include "titan.memberHosts" .) -}}
{{- $addrs = append $addrs (printf "%s:%d" . (int $.Values.cell.port)) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}

{{/*
TOML. Values come through YAML as float64 (Helm reads numbers so), and Titan's integer settings refuse 100.0: a whole
number is written as an integer (TOML integers are also accepted for Titan's fractional settings).
*/}}
{{- define "titan.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "titan.toml.value" $e }}{{ end }}]
{{- else -}}
{{- fail (printf "a setting of kind %s cannot be written to titan.toml: %v" (kindOf $v) $v) -}}
{{- end -}}
{{- end -}}

{{/* A key, quoted unless it is a bare TOML key. */}}
{{- define "titan.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/*
A table: its plain keys, then each sub-table under [prefix.key] and each list of tables as [[prefix.key]] entries,
keys in sorted order. Takes (dict "prefix" "raft" "table" $t "array" false).
*/}}
{{- define "titan.toml.table" -}}
{{- $t := .table -}}
{{- $prefix := .prefix -}}
{{- if .array }}
[[{{ $prefix }}]]
{{- else if $prefix }}
[{{ $prefix }}]
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := get $t $k -}}
{{- $nested := or (kindIs "map" $v) (and (kindIs "slice" $v) (gt (len $v) 0) (kindIs "map" (first $v))) -}}
{{- if and (not $nested) (not (kindIs "invalid" $v)) }}
{{ include "titan.toml.key" $k }} = {{ include "titan.toml.value" $v }}
{{- end -}}
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := get $t $k -}}
{{- $path := ternary (include "titan.toml.key" $k) (printf "%s.%s" $prefix (include "titan.toml.key" $k)) (eq $prefix "") -}}
{{- if kindIs "map" $v }}
{{ include "titan.toml.table" (dict "prefix" $path "table" $v "array" false) }}
{{- else if and (kindIs "slice" $v) (gt (len $v) 0) (kindIs "map" (first $v)) -}}
{{- range $e := $v }}
{{ include "titan.toml.table" (dict "prefix" $path "table" $e "array" true) }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
