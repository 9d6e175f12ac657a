package chart

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	monitoringv1alpha1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

func TestEveryCIValuesFileRendersObjectsThatDecodeStrictly(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(file, func(t *testing.T) {
			objs := render(t, []string{file})
			if len(objs) == 0 {
				t.Fatal("nothing rendered")
			}
			for _, o := range objs {
				namespaced := o.Kind != "ClusterRole" && o.Kind != "ClusterRoleBinding"
				if namespaced && o.Namespace == "" {
					t.Errorf("%s/%s has no namespace", o.Kind, o.Name)
				}
				if o.Labels["component"] == "" && o.Kind != "ClusterRoleBinding" && o.Kind != "ClusterRole" {
					t.Errorf("%s/%s lacks the component label", o.Kind, o.Name)
				}
			}
		})
	}
}

func TestEveryPodRunsRestrictedAndIsProbed(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(file, func(t *testing.T) {
			for workload, spec := range render(t, []string{file}).podSpecs() {
				pod := spec.SecurityContext
				if pod == nil || pod.RunAsNonRoot == nil || !*pod.RunAsNonRoot {
					t.Errorf("%s: pods may run as root", workload)
				}
				if pod == nil || pod.SeccompProfile == nil || pod.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
					t.Errorf("%s: no RuntimeDefault seccomp profile", workload)
				}
				for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
					sc := c.SecurityContext
					if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
						sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
						sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
						t.Errorf("%s: container %s is not restricted: %+v", workload, c.Name, sc)
					}
					if c.Name == "copy-certs" {
						// It reads root's files on the host, deliberately as root.
						if sc == nil || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
							t.Errorf("%s: copy-certs does not run as root, so it cannot read the host's keys", workload)
						}
						continue
					}
					if c.LivenessProbe == nil || c.ReadinessProbe == nil {
						t.Errorf("%s: container %s lacks a liveness or readiness probe", workload, c.Name)
					}
					if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
						t.Errorf("%s: container %s requests no CPU or memory", workload, c.Name)
					}
				}
			}
		})
	}
}

// rancherCase is a rancher-monitoring component and what its values must
// render: the deployment rancher-pushprox renders for them.
type rancherCase struct {
	name        string
	values      string
	workload    string // Kind/name of the clients, empty for none
	replicas    int32  // of a client Deployment
	args        []string
	port        string // the clients' PORT
	initCopies  bool   // an init container copies the host's certificates
	token       bool   // the service account token is mounted
	rbacRules   []string
	endpoints   int
	httpsParams bool // endpoints ask for HTTPS with _scheme
}

var rancherCases = []rancherCase{
	{
		name:     "etcd is scraped over HTTPS with certificates copied from the host",
		values:   "ci/rke-etcd-values.yaml",
		workload: "DaemonSet/pushprox-kube-etcd-client",
		args: []string{"--fqdn=$(HOST_IP)", "--proxy-url=$(PROXY_URL)", "--metrics-addr=$(PORT)", "--allow-port=2379",
			"--tls.cert=/etc/ssl/push-proxy/push-proxy.pem", "--tls.key=/etc/ssl/push-proxy/push-proxy-key.pem",
			"--tls.cacert=/etc/ssl/push-proxy/push-proxy-ca-cert.pem"},
		port: "127.0.0.1:10014", initCopies: true, endpoints: 1, httpsParams: true,
	},
	{
		name:     "kube-scheduler is scraped over HTTPS on localhost with the service account token",
		values:   "ci/kubeadm-scheduler-values.yaml",
		workload: "DaemonSet/pushprox-kube-scheduler-client",
		args: []string{"--fqdn=$(HOST_IP)", "--proxy-url=$(PROXY_URL)", "--metrics-addr=$(PORT)", "--allow-port=10259",
			"--use-localhost", "--insecure-skip-verify", "--token-path=/var/run/secrets/kubernetes.io/serviceaccount/token"},
		port: "127.0.0.1:10012", token: true, rbacRules: []string{"/metrics"}, endpoints: 1, httpsParams: true,
	},
	{
		name:     "kube-controller-manager keeps the secure port as the old clusters' override does not apply",
		values:   "ci/rke2-controller-manager-values.yaml",
		workload: "DaemonSet/pushprox-kube-controller-manager-client",
		args: []string{"--fqdn=$(HOST_IP)", "--proxy-url=$(PROXY_URL)", "--metrics-addr=$(PORT)", "--allow-port=10257",
			"--use-localhost", "--insecure-skip-verify", "--token-path=/var/run/secrets/kubernetes.io/serviceaccount/token"},
		port: "127.0.0.1:10011", token: true, rbacRules: []string{"/metrics"}, endpoints: 1, httpsParams: true,
	},
	{
		name:     "kube-proxy is scraped over HTTP on localhost",
		values:   "ci/rke-proxy-values.yaml",
		workload: "DaemonSet/pushprox-kube-proxy-client",
		args:     []string{"--fqdn=$(HOST_IP)", "--proxy-url=$(PROXY_URL)", "--metrics-addr=$(PORT)", "--allow-port=10249", "--use-localhost"},
		port:     "127.0.0.1:10013", endpoints: 1,
	},
	{
		name:     "ingress-nginx is scraped on the workers' localhost",
		values:   "ci/rke-ingress-nginx-values.yaml",
		workload: "DaemonSet/pushprox-ingress-nginx-client",
		args:     []string{"--fqdn=$(HOST_IP)", "--proxy-url=$(PROXY_URL)", "--metrics-addr=$(PORT)", "--allow-port=10254", "--use-localhost"},
		port:     "127.0.0.1:10015", endpoints: 1,
	},
	{
		name:     "ingress-nginx clients run as a Deployment next to a host-network controller",
		values:   "ci/rke2-ingress-nginx-deployment-values.yaml",
		workload: "Deployment/pushprox-ingress-nginx-client", replicas: 1,
		args: []string{"--fqdn=$(HOST_IP)", "--proxy-url=$(PROXY_URL)", "--metrics-addr=$(PORT)", "--allow-port=10254", "--use-localhost"},
		port: "127.0.0.1:10015", endpoints: 1,
	},
	{
		name:     "the kubelet is scraped on three paths with the token and extra rules",
		values:   "ci/hardened-kubelet-values.yaml",
		workload: "DaemonSet/pushprox-kubelet-client",
		args: []string{"--fqdn=$(HOST_IP)", "--proxy-url=$(PROXY_URL)", "--metrics-addr=$(PORT)", "--allow-port=10250",
			"--use-localhost", "--insecure-skip-verify", "--token-path=/var/run/secrets/kubernetes.io/serviceaccount/token"},
		port: "127.0.0.1:10015", token: true, rbacRules: []string{"/metrics", "/metrics/cadvisor", "nodes/metrics"},
		endpoints: 3, httpsParams: true,
	},
	{
		name:      "ingress-nginx off the host network is scraped directly without clients or proxy",
		values:    "ci/rke2-ingress-nginx-direct-values.yaml",
		endpoints: 1,
	},
}

func TestRancherMonitoringValuesRenderTheRancherDeployment(t *testing.T) {
	for _, tc := range rancherCases {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, []string{tc.values})
			var values struct {
				Component         string `json:"component"`
				MetricsPort       int    `json:"metricsPort"`
				NamespaceOverride string `json:"namespaceOverride"`
			}
			raw, err := os.ReadFile(tc.values)
			if err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal(raw, &values); err != nil {
				t.Fatal(err)
			}
			ns := namespace
			if values.NamespaceOverride != "" {
				ns = values.NamespaceOverride
			}
			clientName := "pushprox-" + values.Component + "-client"
			proxyName := "pushprox-" + values.Component + "-proxy"
			proxyURL := fmt.Sprintf("http://%s.%s.svc:8080", proxyName, ns)

			// The Service the ServiceMonitor reads targets from always has
			// rancher-pushprox's name and port.
			svc, _ := objs.find("Service", clientName).(*corev1.Service)
			if svc == nil {
				t.Fatalf("no Service %s among %v", clientName, objs.names())
			}
			if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || int(svc.Spec.Ports[0].Port) != values.MetricsPort {
				t.Errorf("Service %s ports = %+v, want metrics on %d", clientName, svc.Spec.Ports, values.MetricsPort)
			}
			sm, _ := objs.find("ServiceMonitor", "rancher-monitoring-"+values.Component).(*monitoringv1.ServiceMonitor)
			if sm == nil {
				t.Fatalf("no ServiceMonitor rancher-monitoring-%s among %v", values.Component, objs.names())
			}
			if sm.Spec.JobLabel != "component" || len(sm.Spec.Endpoints) != tc.endpoints {
				t.Errorf("ServiceMonitor job label %q with %d endpoints, want component with %d", sm.Spec.JobLabel, len(sm.Spec.Endpoints), tc.endpoints)
			}

			if tc.workload == "" {
				if objs.find("Deployment", proxyName) != nil || len(objs.podSpecs()) != 0 {
					t.Errorf("workloads rendered with clients and proxy disabled: %v", objs.names())
				}
				if svc.Spec.Selector["app.kubernetes.io/name"] != "rke2-ingress-nginx" || svc.Namespace != "kube-system" {
					t.Errorf("Service selects %v in %s, want the controller in kube-system", svc.Spec.Selector, svc.Namespace)
				}
				for _, e := range sm.Spec.Endpoints {
					if e.ProxyURL != nil {
						t.Errorf("endpoint %+v goes through a proxy that is not deployed", e)
					}
				}
				return
			}

			for _, e := range sm.Spec.Endpoints {
				if e.ProxyURL == nil || *e.ProxyURL != proxyURL {
					t.Errorf("endpoint %s proxyUrl = %v, want %s", e.Path, e.ProxyURL, proxyURL)
				}
				if got := e.Params["_scheme"]; tc.httpsParams != slices.Equal(got, []string{"https"}) {
					t.Errorf("endpoint %s params._scheme = %v, want https: %v", e.Path, got, tc.httpsParams)
				}
				if e.Scheme != nil && *e.Scheme != "http" {
					t.Errorf("endpoint %s scheme %q cannot go through a plain HTTP proxy", e.Path, *e.Scheme)
				}
			}
			if !reflect.DeepEqual(svc.Spec.Selector, map[string]string{"k8s-app": clientName, "release": "rancher-monitoring", "component": values.Component, "provider": "kubernetes"}) {
				t.Errorf("Service selects %v, not the clients", svc.Spec.Selector)
			}
			if !svc.Spec.PublishNotReadyAddresses {
				t.Error("clients that cannot poll would vanish from Prometheus instead of showing up == 0")
			}
			if ps, _ := objs.find("Service", proxyName).(*corev1.Service); ps == nil || ps.Spec.Ports[0].Name != "pp-proxy" || ps.Spec.Ports[0].Port != 8080 {
				t.Errorf("proxy Service %s missing or not pp-proxy on 8080: %+v", proxyName, ps)
			}

			spec := objs.podSpecs()[tc.workload]
			if spec == nil {
				t.Fatalf("no %s among %v", tc.workload, objs.names())
			}
			if d, ok := objs.find("Deployment", clientName).(*appsv1.Deployment); ok {
				if d.Spec.Replicas == nil || *d.Spec.Replicas != tc.replicas {
					t.Errorf("client Deployment replicas = %v, want %d", d.Spec.Replicas, tc.replicas)
				}
				// A surge pod would need the host port its predecessor holds.
				if r := d.Spec.Strategy.RollingUpdate; r == nil || r.MaxSurge.IntValue() != 0 || r.MaxUnavailable.IntValue() != 1 {
					t.Errorf("client Deployment strategy %+v surges", d.Spec.Strategy)
				}
			}
			if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet || spec.ServiceAccountName != clientName {
				t.Errorf("clients: hostNetwork %v, dnsPolicy %s, service account %s", spec.HostNetwork, spec.DNSPolicy, spec.ServiceAccountName)
			}
			if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken != tc.token {
				t.Errorf("service account token mounted = %v, want %v", spec.AutomountServiceAccountToken, tc.token)
			}
			c := spec.Containers[0]
			if c.Name != "pushprox-client" || !slices.Equal(c.Command, []string{"/bin/pushprox-client"}) {
				t.Errorf("client container %s runs %v", c.Name, c.Command)
			}
			if !slices.Equal(c.Args, tc.args) {
				t.Errorf("client args\n got %q\nwant %q", c.Args, tc.args)
			}
			env := map[string]string{}
			for _, e := range c.Env {
				env[e.Name] = e.Value
				if e.Name == "HOST_IP" && (e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != "status.hostIP") {
					t.Errorf("HOST_IP is not the node's IP: %+v", e)
				}
			}
			if env["PROXY_URL"] != proxyURL || env["PORT"] != tc.port {
				t.Errorf("PROXY_URL %q and PORT %q, want %q and %q", env["PROXY_URL"], env["PORT"], proxyURL, tc.port)
			}
			var volumes []string
			for _, v := range spec.Volumes {
				volumes = append(volumes, v.Name)
			}
			if tc.initCopies {
				if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != "copy-certs" {
					t.Fatalf("init containers %+v, want copy-certs", spec.InitContainers)
				}
				if !slices.Equal(volumes, []string{"metrics-cert-dir-source", "metrics-cert-dir"}) ||
					spec.Volumes[0].HostPath == nil || spec.Volumes[0].HostPath.Path != "/etc/kubernetes/ssl" {
					t.Errorf("volumes %+v, want the host's /etc/kubernetes/ssl and a copy", spec.Volumes)
				}
				if opts := spec.InitContainers[0].SecurityContext.SELinuxOptions; opts == nil || opts.Type != "rke_kubereader_t" {
					t.Errorf("copy-certs SELinux options %+v, want type rke_kubereader_t", opts)
				}
			} else if len(spec.InitContainers) != 0 || len(volumes) != 0 {
				t.Errorf("init containers %v and volumes %v, want none", spec.InitContainers, volumes)
			}

			role, _ := objs.find("ClusterRole", clientName).(*rbacv1.ClusterRole)
			var rules []string
			if role != nil {
				for _, r := range role.Rules {
					rules = append(rules, r.NonResourceURLs...)
					rules = append(rules, r.Resources...)
				}
			}
			if !slices.Equal(rules, tc.rbacRules) {
				t.Errorf("client ClusterRole grants %v, want %v", rules, tc.rbacRules)
			}
			if tc.token && objs.find("ClusterRoleBinding", clientName) == nil {
				t.Error("the ClusterRole is bound to nothing")
			}
		})
	}
}

func TestTheKubeletEndpointsKeepTheirPathsAndGainClusterLabels(t *testing.T) {
	objs := render(t, []string{"ci/hardened-kubelet-values.yaml"})
	sm := objs.find("ServiceMonitor", "rancher-monitoring-kubelet").(*monitoringv1.ServiceMonitor)
	var paths []string
	for _, e := range sm.Spec.Endpoints {
		paths = append(paths, e.Path)
		if !e.HonorLabels || len(e.RelabelConfigs) != 1 {
			t.Errorf("endpoint %s lost honorLabels or relabelings: %+v", e.Path, e)
		}
		var targets []string
		for _, r := range e.MetricRelabelConfigs {
			targets = append(targets, r.TargetLabel+"="+*r.Replacement)
		}
		if !slices.Equal(targets, []string{"cluster_id=c-m-12345", "cluster_name=downstream"}) {
			t.Errorf("endpoint %s metric relabelings add %v", e.Path, targets)
		}
	}
	if !slices.Equal(paths, []string{"", "/metrics/cadvisor", "/metrics/probes"}) {
		t.Errorf("endpoint paths %q", paths)
	}
	spec := objs.podSpecs()["DaemonSet/pushprox-kubelet-client"]
	if got := spec.Containers[0].Image; got != "registry.example.com/pushprox/pushprox:0.1.0" {
		t.Errorf("client image %q does not come from the system default registry", got)
	}
	if len(spec.ImagePullSecrets) != 1 || spec.ImagePullSecrets[0].Name != "regcred" {
		t.Errorf("image pull secrets %+v", spec.ImagePullSecrets)
	}
}

// extensionCase renders values beyond rancher-pushprox's and checks them.
type extensionCase struct {
	name   string
	values []string
	sets   []string
	check  func(t *testing.T, objs rendered)
}

// container returns the first container of a workload.
func container(t *testing.T, objs rendered, workload string) corev1.Container {
	t.Helper()
	spec := objs.podSpecs()[workload]
	if spec == nil {
		t.Fatalf("no %s among %v", workload, objs.names())
	}
	return spec.Containers[0]
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

var extensionCases = []extensionCase{
	{
		name:   "clients poll every proxy replica through a headless Service that lists replicas before they are ready",
		values: []string{"ci/ha-values.yaml"},
		check: func(t *testing.T, objs rendered) {
			d := objs.find("Deployment", "pushprox-node-exporter-proxy").(*appsv1.Deployment)
			if *d.Spec.Replicas != 3 || d.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue() != 0 {
				t.Errorf("proxy replicas %d, strategy %+v", *d.Spec.Replicas, d.Spec.Strategy)
			}
			headless, _ := objs.find("Service", "pushprox-node-exporter-proxy-headless").(*corev1.Service)
			if headless == nil || headless.Spec.ClusterIP != "None" || !headless.Spec.PublishNotReadyAddresses {
				t.Fatalf("headless Service %+v", headless)
			}
			c := container(t, objs, "DaemonSet/pushprox-node-exporter-client")
			if !slices.Contains(c.Args, "--proxy.resolve-all") {
				t.Errorf("clients do not poll every replica: %q", c.Args)
			}
			if got := envValue(c, "PROXY_URL"); got != "http://pushprox-node-exporter-proxy-headless.cattle-monitoring-system.svc:8080" {
				t.Errorf("clients poll %s, not the headless Service", got)
			}
			if got := envValue(c, "PORT"); got != ":10016" {
				t.Errorf("clients.metrics.enabled serves metrics on %q, want every address", got)
			}
			for _, want := range []string{"--label=cluster=production", "--label=rack=r12"} {
				if !slices.Contains(c.Args, want) {
					t.Errorf("client args %q lack %s", c.Args, want)
				}
			}
			p := d.Spec.Template.Spec.Containers[0]
			if p.ReadinessProbe.InitialDelaySeconds != 35 {
				t.Errorf("a new replica is ready after %ds, before clients look for it again (30s)", p.ReadinessProbe.InitialDelaySeconds)
			}
			grace := *d.Spec.Template.Spec.TerminationGracePeriodSeconds
			if p.Lifecycle == nil || p.Lifecycle.PreStop == nil || p.Lifecycle.PreStop.Sleep == nil ||
				int64(p.Lifecycle.PreStop.Sleep.Seconds)+15 >= grace {
				t.Errorf("pre-stop %+v with a grace period of %ds leaves scrapes in flight no time", p.Lifecycle, grace)
			}
			if !slices.Contains(p.Args, "--web.shutdown-timeout=15s") || !slices.Contains(p.Args, "--registration.timeout=2m") {
				t.Errorf("proxy args %q", p.Args)
			}
			pdb, _ := objs.find("PodDisruptionBudget", "pushprox-node-exporter-proxy").(*policyv1.PodDisruptionBudget)
			if pdb == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
				t.Errorf("disruption budget %+v", pdb)
			}
			sc, _ := objs.find("ScrapeConfig", "rancher-monitoring-node-exporter").(*monitoringv1alpha1.ScrapeConfig)
			if sc == nil {
				t.Fatal("no ScrapeConfig")
			}
			if got := sc.Spec.HTTPSDConfigs[0].URL; got != "http://pushprox-node-exporter-proxy.cattle-monitoring-system.svc:8080/clients?label=cluster%3Dproduction" {
				t.Errorf("ScrapeConfig discovers from %s", got)
			}
			if sc.Spec.ProxyURL == nil || *sc.Spec.ProxyURL != "http://pushprox-node-exporter-proxy.cattle-monitoring-system.svc:8080" {
				t.Errorf("ScrapeConfig scrapes through %v", sc.Spec.ProxyURL)
			}
			if r := sc.Spec.RelabelConfigs[0]; r.TargetLabel != "__address__" || *r.Replacement != "${1}:9796" {
				t.Errorf("ScrapeConfig relabels %+v", r)
			}
			if objs.find("ServiceMonitor", "rancher-monitoring-node-exporter") != nil {
				t.Error("the ServiceMonitor is rendered although disabled")
			}
			proxySM, _ := objs.find("ServiceMonitor", "pushprox-node-exporter-proxy").(*monitoringv1.ServiceMonitor)
			if proxySM == nil || len(proxySM.Spec.Selector.MatchExpressions) != 1 {
				t.Errorf("the proxy's ServiceMonitor would scrape each replica twice: %+v", proxySM)
			}
			np, _ := objs.find("NetworkPolicy", "pushprox-node-exporter-proxy").(*networkingv1.NetworkPolicy)
			if np == nil || len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 3 || np.Spec.Ingress[0].From[1].IPBlock.CIDR != "10.0.0.0/16" {
				t.Errorf("network policy %+v", np)
			}
		},
	},
	{
		name:   "TLS to the proxy keeps the target's certificates apart and probes over HTTPS",
		values: []string{"ci/tls-values.yaml"},
		check: func(t *testing.T, objs rendered) {
			c := container(t, objs, "DaemonSet/pushprox-kube-etcd-client")
			want := []string{"--fqdn=$(HOST_IP)", "--proxy-url=$(PROXY_URL)", "--metrics-addr=$(PORT)", "--allow-port=2379",
				"--no-scrape.tls.insecure-skip-verify",
				"--scrape.tls.cert=/etc/ssl/push-proxy/push-proxy.pem", "--scrape.tls.key=/etc/ssl/push-proxy/push-proxy-key.pem",
				"--scrape.tls.cacert=/etc/ssl/push-proxy/push-proxy-ca-cert.pem",
				"--tls.cacert=/etc/pushprox/proxy-tls/ca.crt", "--tls.cert=/etc/pushprox/proxy-tls/tls.crt", "--tls.key=/etc/pushprox/proxy-tls/tls.key",
				"--web.config.file=/etc/pushprox/web/web.yml"}
			if !slices.Equal(c.Args, want) {
				t.Errorf("client args\n got %q\nwant %q", c.Args, want)
			}
			if got := envValue(c, "PROXY_URL"); got != "https://pushprox-kube-etcd-proxy.cattle-monitoring-system.svc:8080" {
				t.Errorf("clients poll %s", got)
			}
			if c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Scheme != corev1.URISchemeHTTPS {
				t.Errorf("client readiness probe %+v does not use HTTPS", c.ReadinessProbe)
			}
			p := container(t, objs, "Deployment/pushprox-kube-etcd-proxy")
			if !slices.Contains(p.Args, "--auth.bind-fqdn-to-cert") || !slices.Contains(p.Args, "--web.config.file=/etc/pushprox/web/web.yml") {
				t.Errorf("proxy args %q", p.Args)
			}
			if p.LivenessProbe.HTTPGet.Scheme != corev1.URISchemeHTTPS {
				t.Errorf("proxy liveness probe %+v does not use HTTPS", p.LivenessProbe)
			}
			sm := objs.find("ServiceMonitor", "rancher-monitoring-kube-etcd").(*monitoringv1.ServiceMonitor)
			e := sm.Spec.Endpoints[0]
			if *e.ProxyURL != "https://prometheus:secret@pushprox-kube-etcd-proxy.cattle-monitoring-system.svc:8080" ||
				e.TLSConfig == nil || e.TLSConfig.CA.Secret == nil || e.TLSConfig.CA.Secret.Name != "pushprox-proxy-ca" {
				t.Errorf("endpoint does not reach the proxy over verified TLS: %+v", e)
			}
		},
	},
	{
		name:   "a password towards the proxy comes from a Secret and a password-protected listener is probed by port",
		values: []string{"ci/auth-values.yaml"},
		check: func(t *testing.T, objs rendered) {
			c := container(t, objs, "DaemonSet/pushprox-kube-scheduler-client")
			for _, want := range []string{"--proxy.username=kube-scheduler-clients", "--proxy.password-file=/etc/pushprox/proxy-auth/password", "--scrape.tls.insecure-skip-verify"} {
				if !slices.Contains(c.Args, want) {
					t.Errorf("client args %q lack %s", c.Args, want)
				}
			}
			if slices.Contains(c.Args, "--insecure-skip-verify") {
				t.Error("skipping verification of the targets also skips it for the proxy")
			}
			if c.LivenessProbe.TCPSocket == nil || c.LivenessProbe.TCPSocket.Host != "127.0.0.1" {
				t.Errorf("liveness probe %+v would be refused by the password", c.LivenessProbe)
			}
			sm := objs.find("ServiceMonitor", "rancher-monitoring-kube-scheduler").(*monitoringv1.ServiceMonitor)
			a := sm.Spec.Endpoints[0].Authorization
			if a == nil || a.Credentials.Name != "pushprox-kube-scheduler-client-service-account-token" || a.Credentials.Key != "token" {
				t.Errorf("endpoint authorization %+v", a)
			}
			if s, _ := objs.find("Secret", "pushprox-kube-scheduler-client-service-account-token").(*corev1.Secret); s == nil ||
				s.Type != corev1.SecretTypeServiceAccountToken || s.Annotations["kubernetes.io/service-account.name"] != "pushprox-kube-scheduler-client" {
				t.Errorf("token Secret %+v", s)
			}
		},
	},
	{
		name: "forceHTTPSScheme through the proxy asks for HTTPS with _scheme, never with scheme: https",
		sets: []string{"component=x", "metricsPort=1234", "clients.https.forceHTTPSScheme=true"},
		check: func(t *testing.T, objs rendered) {
			e := objs.find("ServiceMonitor", "rancher-monitoring-x").(*monitoringv1.ServiceMonitor).Spec.Endpoints[0]
			if !slices.Equal(e.Params["_scheme"], []string{"https"}) || e.Scheme != nil {
				t.Errorf("endpoint params %v, scheme %v", e.Params, e.Scheme)
			}
		},
	},
	{
		name: "a matching kubeVersionOverrides entry changes the values",
		sets: []string{"component=x", "metricsPort=1234", "kubeVersionOverrides[0].constraint=>= 1.26-0", "kubeVersionOverrides[0].values.metricsPort=4321"},
		check: func(t *testing.T, objs rendered) {
			c := container(t, objs, "DaemonSet/pushprox-x-client")
			if !slices.Contains(c.Args, "--allow-port=4321") {
				t.Errorf("client args %q, want the overridden port", c.Args)
			}
		},
	},
	{
		name: "user labels add to the chart's, never render a key twice, and cannot move a pod out of its selector",
		sets: []string{"component=x", "clients.podLabels.k8s-app=other", "clients.podLabels.team=a", "serviceMonitor.labels.release=prometheus"},
		check: func(t *testing.T, objs rendered) {
			ds := objs.find("DaemonSet", "pushprox-x-client").(*appsv1.DaemonSet)
			if got := ds.Spec.Template.Labels; got["k8s-app"] != "pushprox-x-client" || got["team"] != "a" {
				t.Errorf("pod labels %v", got)
			}
			sm := objs.find("ServiceMonitor", "rancher-monitoring-x").(*monitoringv1.ServiceMonitor)
			if sm.Labels["release"] != "prometheus" {
				t.Errorf("ServiceMonitor labels %v, want release from the values", sm.Labels)
			}
		},
	},
	{
		name: "Prometheus sends its own token file when bearerTokenFile is enabled",
		sets: []string{"component=x", "clients.https.enabled=true", "clients.https.authenticationMethod.bearerTokenFile.enabled=true"},
		check: func(t *testing.T, objs rendered) {
			e := objs.find("ServiceMonitor", "rancher-monitoring-x").(*monitoringv1.ServiceMonitor).Spec.Endpoints[0]
			if e.BearerTokenFile != "/var/run/secrets/kubernetes.io/serviceaccount/token" {
				t.Errorf("endpoint bearerTokenFile %q", e.BearerTokenFile)
			}
		},
	},
	{
		name: "the PrometheusRule holds exactly the chart's alerts file",
		sets: []string{"component=x", "prometheusRule.enabled=true"},
		check: func(t *testing.T, objs rendered) {
			rule := objs.find("PrometheusRule", "pushprox-x").(*monitoringv1.PrometheusRule)
			raw, err := os.ReadFile("files/alerts.yaml")
			if err != nil {
				t.Fatal(err)
			}
			var file monitoringv1.PrometheusRuleSpec
			if err := yaml.UnmarshalStrict(raw, &file); err != nil {
				t.Fatalf("files/alerts.yaml is not a rule file: %v", err)
			}
			if len(file.Groups) == 0 || !reflect.DeepEqual(rule.Spec, file) {
				t.Errorf("rendered rules differ from files/alerts.yaml:\n got %+v\nwant %+v", rule.Spec, file)
			}
		},
	},
}

func TestValuesBeyondRancherPushprox(t *testing.T) {
	for _, tc := range extensionCases {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, render(t, tc.values, tc.sets...))
		})
	}
}

func TestClustersWithoutTheSleepActionGetNoPreStopHook(t *testing.T) {
	objs := renderFor(t, "1.29.0", nil, "component=x")
	p := container(t, objs, "Deployment/pushprox-x-proxy")
	if p.Lifecycle != nil {
		t.Errorf("lifecycle %+v would be refused by Kubernetes 1.29", p.Lifecycle)
	}
}

func TestValuesThatCannotWorkAreRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		sets []string
		want string
	}{
		{"a Service selector next to clients", []string{"service.selector.app=x"}, "cannot be set with clients.enabled"},
		{"a grace period shorter than the shutdown", []string{"proxy.terminationGracePeriodSeconds=10"}, "must exceed"},
		{"a network policy without the nodes' networks", []string{"networkPolicy.enabled=true"}, "nodeCIDRs is required"},
		{"binding FQDNs to certificates without a web config", []string{"proxy.bindFQDNToCert=true"}, "needs proxy.webConfig"},
		{"a web config without its Secret", []string{"proxy.webConfig.enabled=true"}, "secretName is required"},
		{"a client certificate without its key", []string{"clients.proxyTLS.enabled=true", "clients.proxyTLS.secretName=s", "clients.proxyTLS.certFile=tls.crt"}, "go together"},
		{"host certificates without their names", []string{"clients.https.enabled=true", "clients.https.certDir=/etc/kubernetes/ssl"}, "certFile is required"},
		{"no component", []string{"component="}, "component is required"},
	} {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			_, err := helmTemplate(t, kubeVersion, nil, tc.sets)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestEveryRenderedCommandLineIsAcceptedByTheBinaries(t *testing.T) {
	bin := binaries(t)
	proxyAddr := parkedProxy(t)
	for _, file := range ciValuesFiles(t) {
		t.Run(file, func(t *testing.T) {
			for workload, spec := range render(t, []string{file}).podSpecs() {
				for _, c := range spec.Containers {
					binary := filepath.Join(bin, path.Base(c.Command[0]))
					if len(c.Command) != 1 || (path.Base(c.Command[0]) != "pushprox-proxy" && path.Base(c.Command[0]) != "pushprox-client") {
						t.Fatalf("%s: container %s runs %q, not one of the binaries", workload, c.Name, c.Command)
					}
					f := newFixtures(t, servesTLS(c), asksPassword(c))
					args := localArgs(t, c, expandArgs(t, c), f, proxyAddr)
					err := runsWith(binary, args, func(line string) error { return probesAnswer(c, line) })
					if err != nil {
						t.Errorf("%s: %s %q: %v", workload, path.Base(binary), args, err)
					}
				}
			}
		})
	}
}

// servesTLS tells whether the chart says the container's listener serves
// TLS, so that its web config fixture must: it probes over HTTPS, or binds
// FQDNs to client certificates.
func servesTLS(c corev1.Container) bool {
	for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		if probe != nil && probe.HTTPGet != nil && probe.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			return true
		}
	}
	return slices.Contains(c.Args, "--auth.bind-fqdn-to-cert")
}

// asksPassword tells whether the container's web config fixture may ask
// for a password: the proxy answers its probes without one, while a client
// listener that asks for one is probed by port only.
func asksPassword(c corev1.Container) bool {
	if c.Name == "pushprox-proxy" {
		return true
	}
	return c.LivenessProbe != nil && c.LivenessProbe.TCPSocket != nil
}

// listenAddress finds where a started binary listens, in its start line
// (logfmt or JSON).
var listenAddress = regexp.MustCompile(`\b(?:address|metrics_address)=(\S+)|"(?:address|metrics_address)":"([^"]+)"`)

// probesAnswer checks the container's probes against the started binary:
// the paths it probes are served, over the scheme it probes with.
func probesAnswer(c corev1.Container, startLine string) error {
	m := listenAddress.FindStringSubmatch(startLine)
	if m == nil {
		return fmt.Errorf("no listen address in %q", startLine)
	}
	addr := m[1] + m[2]
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	for _, probe := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
		switch {
		case probe == nil:
		case probe.TCPSocket != nil:
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return fmt.Errorf("tcp probe: %v", err)
			}
			conn.Close()
		case probe.HTTPGet != nil:
			scheme := strings.ToLower(string(probe.HTTPGet.Scheme))
			resp, err := client.Get(scheme + "://" + addr + probe.HTTPGet.Path)
			if err != nil {
				return fmt.Errorf("probe %s: %v", probe.HTTPGet.Path, err)
			}
			resp.Body.Close()
			// A client polling nothing is not ready (503); any other
			// answer than 200 or 503 means the probe reaches no handler.
			if resp.StatusCode != http.StatusOK && !(probe.HTTPGet.Path == "/-/ready" && resp.StatusCode == http.StatusServiceUnavailable) {
				return fmt.Errorf("probe %s answered %s", probe.HTTPGet.Path, resp.Status)
			}
		}
	}
	return nil
}

func TestTheCopyCertsScriptPicksTheNodesCertificateAndKey(t *testing.T) {
	spec := render(t, []string{"ci/rke-etcd-values.yaml"}).podSpecs()["DaemonSet/pushprox-kube-etcd-client"]
	init := spec.InitContainers[0]
	if len(init.Command) != 3 || init.Command[0] != "sh" || init.Command[1] != "-c" {
		t.Fatalf("copy-certs runs %q", init.Command)
	}
	for _, tc := range []struct {
		name    string
		files   []string // under the host directory
		wantErr string
	}{
		{
			name:  "the last certificate in sort order is copied with its own key, never a key in its place",
			files: []string{"kube-etcd-10-0-0-1.pem", "kube-etcd-10-0-0-1-key.pem", "kube-etcd-10-0-0-2.pem", "kube-etcd-10-0-0-2-key.pem", "kube-ca.pem", "kube-apiserver.pem"},
		},
		{
			name:    "a missing CA stops the pod with its name",
			files:   []string{"kube-etcd-10-0-0-1.pem", "kube-etcd-10-0-0-1-key.pem"},
			wantErr: "no file named kube-ca.pem in /etc/kubernetes/ssl",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			source, target := t.TempDir(), t.TempDir()
			for _, name := range tc.files {
				write(t, filepath.Join(source, "ssl", name), []byte(name))
			}
			// The script's two mounts become folders of this test.
			script := strings.NewReplacer("/etc/source", source, "/etc/ssl/push-proxy", target).Replace(init.Command[2])
			cmd := exec.Command("sh", "-c", script)
			for _, e := range init.Env {
				cmd.Env = append(cmd.Env, e.Name+"="+e.Value)
			}
			cmd.Env = append(cmd.Env, "PATH="+os.Getenv("PATH"))
			out, err := cmd.CombinedOutput()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(string(out), tc.wantErr) {
					t.Fatalf("got %v: %s, want a failure saying %q", err, out, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			for copied, want := range map[string]struct {
				from string
				mode os.FileMode
			}{
				"push-proxy.pem":         {"kube-etcd-10-0-0-2.pem", 0o444},
				"push-proxy-key.pem":     {"kube-etcd-10-0-0-2-key.pem", 0o440},
				"push-proxy-ca-cert.pem": {"kube-ca.pem", 0o444},
			} {
				name := filepath.Join(target, copied)
				content, err := os.ReadFile(name)
				if err != nil {
					t.Fatal(err)
				}
				info, err := os.Stat(name)
				if err != nil {
					t.Fatal(err)
				}
				if string(content) != want.from || info.Mode().Perm() != want.mode {
					t.Errorf("%s holds %s with mode %v, want %s with %v", copied, content, info.Mode().Perm(), want.from, want.mode)
				}
			}
		})
	}
}

func TestTheChartsAlertsAreTheProjectsMixin(t *testing.T) {
	mixin, err := os.ReadFile("../mixin/alerts.yaml")
	if os.IsNotExist(err) {
		// The mixin is written on another branch; once it is merged this
		// test holds the chart's copy to it.
		t.Skip("no mixin/alerts.yaml in this checkout yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	copied, err := os.ReadFile("files/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(copied) != string(mixin) {
		t.Error("chart/files/alerts.yaml differs from mixin/alerts.yaml: cp mixin/alerts.yaml chart/files/alerts.yaml")
	}
}
