// Package chart tests the pushprox Helm chart: every object it renders
// decodes strictly into its Kubernetes or Prometheus Operator API type, the
// rendered deployments are what rancher-pushprox users expect, and every
// command line it renders is accepted by the real binaries.
//
// It is a module of its own, so that the project's module does not depend
// on the Kubernetes API packages.
package chart

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	monitoringv1alpha1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// kubeVersion is the cluster version rendering assumes; helm template
// otherwise assumes one older than the chart's kubeVersion allows.
const kubeVersion = "1.31.0"

// namespace is the namespace rancher-monitoring installs into.
const namespace = "cattle-monitoring-system"

// helm returns the helm binary: $HELM, else the one make chart-test
// builds, else helm on the PATH.
func helm(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	if built, err := filepath.Abs("../.cache/bin/helm"); err == nil {
		if _, err := os.Stat(built); err == nil {
			return built
		}
	}
	h, err := exec.LookPath("helm")
	if err != nil {
		t.Fatal("no helm: run make chart-test, which builds it, or set $HELM")
	}
	return h
}

// object is one rendered manifest, decoded into its API type.
type object struct {
	metav1.TypeMeta
	metav1.ObjectMeta
	source string // the template it came from
	value  any    // *appsv1.Deployment, *corev1.Service...
}

// newTyped returns an empty value of the API type of apiVersion and kind.
func newTyped(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "rbac.authorization.k8s.io/v1/ClusterRole":
		return &rbacv1.ClusterRole{}, true
	case "rbac.authorization.k8s.io/v1/ClusterRoleBinding":
		return &rbacv1.ClusterRoleBinding{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, true
	case "monitoring.coreos.com/v1/PrometheusRule":
		return &monitoringv1.PrometheusRule{}, true
	case "monitoring.coreos.com/v1alpha1/ScrapeConfig":
		return &monitoringv1alpha1.ScrapeConfig{}, true
	}
	return nil, false
}

// rendered is a chart rendering: its objects in order.
type rendered []object

// helmTemplate runs helm template with the values files (relative to the
// chart) and --set flags, and returns its output or its error text.
func helmTemplate(t *testing.T, kube string, valuesFiles []string, sets []string) (string, error) {
	t.Helper()
	args := []string{"template", "rancher-monitoring", ".", "--namespace", namespace, "--kube-version", kube}
	for _, f := range valuesFiles {
		args = append(args, "--values", f)
	}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	cmd := exec.Command(helm(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("helm %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// render renders the chart and decodes every object strictly: an unknown
// field, a wrong type or a duplicate key fails the test.
func render(t *testing.T, valuesFiles []string, sets ...string) rendered {
	t.Helper()
	return renderFor(t, kubeVersion, valuesFiles, sets...)
}

func renderFor(t *testing.T, kube string, valuesFiles []string, sets ...string) rendered {
	t.Helper()
	out, err := helmTemplate(t, kube, valuesFiles, sets)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeAll(out)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// decodeAll splits helm's output into documents and decodes each into its
// API type with sigs.k8s.io/yaml's strict decoding.
func decodeAll(out string) (rendered, error) {
	var objs rendered
	for _, doc := range strings.Split(out, "\n---") {
		source := ""
		for _, line := range strings.Split(doc, "\n") {
			if s, ok := strings.CutPrefix(line, "# Source: "); ok {
				source = s
			}
		}
		var head struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("%s: %v", source, err)
		}
		if head.Kind == "" && head.APIVersion == "" {
			continue // a document with comments only
		}
		typed, ok := newTyped(head.APIVersion, head.Kind)
		if !ok {
			return nil, fmt.Errorf("%s: no API type known for %s %s", source, head.APIVersion, head.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), typed); err != nil {
			return nil, fmt.Errorf("%s: %s %s does not decode strictly: %v", source, head.Kind, head.Name, err)
		}
		objs = append(objs, object{TypeMeta: head.TypeMeta, ObjectMeta: head.ObjectMeta, source: source, value: typed})
	}
	return objs, nil
}

// find returns the object of that kind and name, or nil.
func (r rendered) find(kind, name string) any {
	for _, o := range r {
		if o.Kind == kind && o.Name == name {
			return o.value
		}
	}
	return nil
}

// names lists "Kind/name" of every object.
func (r rendered) names() []string {
	var out []string
	for _, o := range r {
		out = append(out, o.Kind+"/"+o.Name)
	}
	return out
}

// podSpecs returns the pod template of every workload, by workload name.
func (r rendered) podSpecs() map[string]*corev1.PodSpec {
	specs := map[string]*corev1.PodSpec{}
	for _, o := range r {
		switch v := o.value.(type) {
		case *appsv1.Deployment:
			specs[o.Kind+"/"+o.Name] = &v.Spec.Template.Spec
		case *appsv1.DaemonSet:
			specs[o.Kind+"/"+o.Name] = &v.Spec.Template.Spec
		}
	}
	return specs
}

// ciValuesFiles lists the values files under ci/, which helm lint and CI
// render.
func ciValuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("ci/*-values.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no values files under ci/: %v", err)
	}
	return files
}
