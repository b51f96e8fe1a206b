{{- define "dicom-router.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dicom-router.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dicom-router.labels" -}}
app.kubernetes.io/name: {{ include "dicom-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dicom-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dicom-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dicom-router.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "dicom-router.spoolClaim" -}}
{{- .Values.spool.existingClaim | default (printf "%s-spool" (include "dicom-router.fullname" .)) -}}
{{- end -}}

{{- define "dicom-router.rulesConfigMap" -}}
{{- .Values.existingRulesConfigMap | default (printf "%s-rules" (include "dicom-router.fullname" .)) -}}
{{- end -}}

{{/*
router.yaml: the operator's config with the keys the pod layout decides.
*/}}
{{- define "dicom-router.config" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- $_ := set $config "listen" (dict "host" "0.0.0.0" "port" (int .Values.scp.port)) -}}
{{- $spool := deepCopy ($config.spool | default dict) -}}
{{- $_ := set $spool "dir" "/var/lib/dicom-router/spool" -}}
{{- $_ := set $config "spool" $spool -}}
{{- $_ := set $config "rules" "/etc/dicom-router/rules" -}}
{{- $_ := set $config "metrics" (dict "host" "0.0.0.0" "port" (int .Values.metrics.port) "worker_port" (int .Values.metrics.workerPort)) -}}
{{- $audit := deepCopy ($config.audit | default dict) -}}
{{- $_ := set $audit "file" "/var/lib/dicom-router/audit/audit.jsonl" -}}
{{- if and $audit.syslog (not (hasKey $audit.syslog "queue_dir")) -}}
{{- $_ := set $audit.syslog "queue_dir" "/var/lib/dicom-router/audit-syslog" -}}
{{- end -}}
{{- $_ := set $config "audit" $audit -}}
{{- if and $config.tls (not (hasKey $config.tls "port")) -}}
{{- $_ := set $config.tls "port" (int .Values.scp.tlsPort) -}}
{{- end -}}
{{- if .Values.salt.existingSecret -}}
{{- $_ := set $config "salt_file" "/etc/dicom-router/salt/salt" -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
Environment shared by every router container. Each pod appends to an audit trail
of its own on the shared volume. The queue of DICOM audit messages is one folder
for all pods: senders claim each message with flock, and a message queued by a pod
that is gone is still sent by the others.
*/}}
{{- define "dicom-router.env" -}}
- name: ROUTER_CONFIG
  value: /etc/dicom-router/router.yaml
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: ROUTER_AUDIT__FILE
  value: /var/lib/dicom-router/audit/$(POD_NAME).jsonl
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "dicom-router.volumeMounts" -}}
- name: config
  mountPath: /etc/dicom-router/router.yaml
  subPath: router.yaml
  readOnly: true
- name: rules
  mountPath: /etc/dicom-router/rules
  readOnly: true
- name: spool
  mountPath: /var/lib/dicom-router
- name: tmp
  mountPath: /tmp
{{- if .Values.salt.existingSecret }}
- name: salt
  mountPath: /etc/dicom-router/salt
  readOnly: true
{{- end }}
{{- if .Values.tls.existingSecret }}
- name: tls
  mountPath: /etc/dicom-router/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "dicom-router.volumes" -}}
- name: config
  configMap:
    name: {{ include "dicom-router.fullname" . }}
- name: rules
  configMap:
    name: {{ include "dicom-router.rulesConfigMap" . }}
- name: spool
  persistentVolumeClaim:
    claimName: {{ include "dicom-router.spoolClaim" . }}
- name: tmp
  emptyDir: {}
{{- if .Values.salt.existingSecret }}
- name: salt
  secret:
    secretName: {{ .Values.salt.existingSecret }}
    items:
      - key: {{ .Values.salt.key }}
        path: salt
{{- end }}
{{- if .Values.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
{{- end }}
{{- end -}}

{{- define "dicom-router.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
volumes:
  {{- include "dicom-router.volumes" . | nindent 2 }}
{{- end -}}
