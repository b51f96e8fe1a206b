{{/*
A Deployment of router pods: the SCP (`serve`) or the workers (`worker`). Both
mount the same config, rules and spool, and are probed on their metrics port.
*/}}
{{- define "dicom-router.deployment" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $settings := .settings -}}
{{- $args := .args -}}
{{- $metricsPort := .metricsPort -}}
{{- $dicomPorts := .dicomPorts -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "dicom-router.fullname" $root }}-{{ $component }}
  labels:
    {{- include "dicom-router.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $component }}
spec:
  replicas: {{ $settings.replicas }}
  selector:
    matchLabels:
      {{- include "dicom-router.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ $component }}
  template:
    metadata:
      labels:
        {{- include "dicom-router.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $component }}
      annotations:
        checksum/config: {{ include "dicom-router.config" $root | sha256sum }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $metricsPort | quote }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "dicom-router.podCommon" $root | trim | nindent 6 }}
      terminationGracePeriodSeconds: {{ $settings.terminationGracePeriodSeconds }}
      containers:
        - name: {{ $component }}
          image: {{ include "dicom-router.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- toYaml $args | nindent 12 }}
          env:
            {{- include "dicom-router.env" $root | nindent 12 }}
          ports:
            {{- with $dicomPorts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            - name: metrics
              containerPort: {{ $metricsPort }}
          startupProbe:
            httpGet: {path: /healthz, port: metrics}
            periodSeconds: 2
            failureThreshold: 60
          livenessProbe:
            httpGet: {path: /healthz, port: metrics}
            periodSeconds: 10
          readinessProbe:
            httpGet: {path: /readyz, port: metrics}
            periodSeconds: 5
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "dicom-router.volumeMounts" $root | nindent 12 }}
          resources:
            {{- toYaml $settings.resources | nindent 12 }}
      {{- with $settings.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $settings.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $settings.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
