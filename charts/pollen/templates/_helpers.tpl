{{/* Names and labels shared by every template. */}}

{{- define "pollen.fullname" -}}
{{- if contains "pollen" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-pollen" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pollen.labels" -}}
app.kubernetes.io/name: pollen
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pollen.operator.selector" -}}
app.kubernetes.io/name: pollen
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "pollen.edgeNode.selector" -}}
app.kubernetes.io/name: pollen
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: edge-node
{{- end -}}

{{- define "pollen.operator.fullname" -}}{{ include "pollen.fullname" . }}-operator{{- end -}}
{{- define "pollen.edgeNode.fullname" -}}{{ include "pollen.fullname" . }}-edge-node{{- end -}}

{{- define "pollen.operator.serviceAccountName" -}}
{{- default (include "pollen.operator.fullname" .) .Values.serviceAccount.operator.name -}}
{{- end -}}

{{- define "pollen.edgeNode.serviceAccountName" -}}
{{- default (include "pollen.edgeNode.fullname" .) .Values.serviceAccount.edgeNode.name -}}
{{- end -}}

{{/* Image reference: registry/repository:tag, the tag defaulting to the appVersion. */}}
{{- define "pollen.image" -}}
{{- $root := index . 0 -}}{{- $repo := index . 1 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry $repo (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{/* The fleet CA Secret name. */}}
{{- define "pollen.fleetCA.secretName" -}}
{{- default (printf "%s-fleet-ca" (include "pollen.fullname" .)) .Values.fleetCA.existingSecret -}}
{{- end -}}

{{/* The operator's registry Secret (pull and push); empty when its access is anonymous. */}}
{{- define "pollen.registry.operatorSecret" -}}
{{- if .Values.registry.operator.existingSecret -}}
{{- .Values.registry.operator.existingSecret -}}
{{- else if .Values.registry.operator.dockerConfigJson -}}
{{- printf "%s-registry-operator" (include "pollen.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The nodes' registry Secret (pull only); empty when their access is anonymous. */}}
{{- define "pollen.registry.nodeSecret" -}}
{{- if .Values.registry.nodes.existingSecret -}}
{{- .Values.registry.nodes.existingSecret -}}
{{- else if .Values.registry.nodes.dockerConfigJson -}}
{{- printf "%s-registry-nodes" (include "pollen.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap of the registry CA bundle; empty when the system roots suffice. */}}
{{- define "pollen.registry.caConfigMap" -}}
{{- if .Values.registry.caBundleConfigMap -}}
{{- .Values.registry.caBundleConfigMap -}}
{{- else if .Values.registry.caBundle -}}
{{- printf "%s-registry-ca" (include "pollen.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Security context of every Pollen container: non-root, read-only root, no capabilities. */}}
{{- define "pollen.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Fails the install when a value combination cannot work, with a message that says what to do. */}}
{{- define "pollen.validate" -}}
{{- if and .Values.fleetCA.certManager.enabled .Values.fleetCA.existingSecret -}}
{{- fail "fleetCA: set either existingSecret or certManager.enabled, not both" -}}
{{- end -}}
{{- if and (not .Values.fleetCA.existingSecret) (not .Values.fleetCA.certManager.enabled) (not .Values.fleetCA.generate) -}}
{{- fail "fleetCA: name an existingSecret, enable certManager, or keep generate: true" -}}
{{- end -}}
{{- range $who := list "operator" "nodes" -}}
{{- $r := index $.Values.registry $who -}}
{{- if and $r.existingSecret $r.dockerConfigJson -}}
{{- fail (printf "registry.%s: set either existingSecret or dockerConfigJson, not both" $who) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.registry.operator.existingSecret (eq .Values.registry.operator.existingSecret .Values.registry.nodes.existingSecret) -}}
{{- fail "registry: the nodes must not share the operator's Secret (it can push); give them a pull-only credential in registry.nodes" -}}
{{- end -}}
{{- if and .Values.registry.caBundle .Values.registry.caBundleConfigMap -}}
{{- fail "registry: set either caBundle or caBundleConfigMap, not both" -}}
{{- end -}}
{{- if and .Values.operator.enabled (not .Values.director.existingSecret) -}}
{{- fail "director.existingSecret is required: create the key with `cosign generate-key-pair k8s://<namespace>/pollen-director` and set director.existingSecret=pollen-director" -}}
{{- end -}}
{{- /* When Helm talks to a cluster (install, upgrade, --dry-run=server; kube-system is then found),
     the director Secret must already exist. `helm template` cannot look, and renders. */ -}}
{{- if and .Values.operator.enabled (lookup "v1" "Namespace" "" "kube-system") -}}
{{- if not (lookup "v1" "Secret" .Release.Namespace .Values.director.existingSecret) -}}
{{- fail (printf "director key Secret %s/%s not found. Helm cannot generate a cosign key; create it first: cosign generate-key-pair k8s://%s/%s" .Release.Namespace .Values.director.existingSecret .Release.Namespace .Values.director.existingSecret) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap holding the fleet CA certificate (ca.crt) that the edge nodes mount. */}}
{{- define "pollen.fleetCA.bundleName" -}}
{{- default (printf "%s-fleet-ca-bundle" (include "pollen.fullname" .)) .Values.fleetCA.caBundleConfigMap -}}
{{- end -}}

{{- define "pollen.validateCABundle" -}}
{{- if and .Values.edgeNode.enabled (or .Values.fleetCA.existingSecret .Values.fleetCA.certManager.enabled) (not .Values.fleetCA.caBundle) (not .Values.fleetCA.caBundleConfigMap) -}}
{{- fail "fleetCA: with existingSecret or certManager, the edge nodes need the CA certificate: set fleetCA.caBundle (PEM) or fleetCA.caBundleConfigMap (a ConfigMap with key ca.crt)" -}}
{{- end -}}
{{- end -}}
