// Command fluxssa applies a directory of YAML with Flux's server-side apply engine
// (github.com/fluxcd/pkg/ssa) the way kustomize-controller does: ApplyAllStaged, then
// WaitForSet over the whole change set, concurrency 4, client QPS 50 / burst 300.
// It prints its timings as one JSON object on stdout; the bench compares them with gitsync.
// Beside the timings it counts the requests of each phase and the time they spent waiting in
// client-go's rate limiter, so the bench can tell where a slow run spends its time.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/pkg/ssa"
	ssautil "github.com/fluxcd/pkg/ssa/utils"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	clientmetrics "k8s.io/client-go/tools/metrics"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

type result struct {
	Objects  int            `json:"objects"`
	ReadS    float64        `json:"read_s"`
	ApplyS   float64        `json:"apply_s"`
	WaitS    float64        `json:"wait_s"`
	TotalS   float64        `json:"total_s"`
	Actions  map[string]int `json:"actions"`
	Apply    *phase         `json:"apply"`
	Wait     *phase         `json:"wait"`
	WaitErr  string         `json:"wait_error,omitempty"`
	ApplyErr string         `json:"apply_error,omitempty"`
}

// phase counts one phase's requests by verb (a dry-run PATCH is "dryrun") and sums the time
// they waited in the client-side rate limiter (summed over the concurrent workers).
type phase struct {
	mu         sync.Mutex
	Requests   map[string]int `json:"requests"`
	ThrottledS float64        `json:"throttled_s"`
}

func (p *phase) request(verb string) {
	p.mu.Lock()
	p.Requests[verb]++
	p.mu.Unlock()
}

// meter routes requests and rate-limiter waits to the phase running now.
type meter struct {
	mu  sync.Mutex
	now *phase
}

func (m *meter) start() *phase {
	p := &phase{Requests: map[string]int{}}
	m.mu.Lock()
	m.now = p
	m.mu.Unlock()
	return p
}

func (m *meter) current() *phase {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

// Observe is client-go's rate-limiter latency hook (tools/metrics.RateLimiterLatency).
func (m *meter) Observe(_ context.Context, _ string, _ url.URL, latency time.Duration) {
	if p := m.current(); p != nil {
		p.mu.Lock()
		p.ThrottledS += latency.Seconds()
		p.mu.Unlock()
	}
}

type counting struct {
	meter *meter
	next  http.RoundTripper
}

func (c counting) RoundTrip(req *http.Request) (*http.Response, error) {
	if p := c.meter.current(); p != nil {
		p.request(verbOf(req))
	}
	return c.next.RoundTrip(req)
}

// verbOf names a request as the apiserver's audit would: a GET without a name is a LIST.
func verbOf(req *http.Request) string {
	if req.URL.Query().Has("dryRun") {
		return "dryrun"
	}
	if req.Method != http.MethodGet {
		return req.Method
	}
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return "discovery"
	}
	if len(parts) >= 3 && parts[0] == "namespaces" {
		parts = parts[2:]
	}
	if len(parts) >= 2 {
		return "GET"
	}
	return "LIST"
}

func readDir(root string) ([]*unstructured.Unstructured, error) {
	var objects []*unstructured.Unstructured
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		objs, err := ssautil.ReadObjects(f)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		objects = append(objects, objs...)
		return nil
	})
	return objects, err
}

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig path")
	dir := flag.String("dir", "", "directory of YAML to apply (recursive)")
	timeout := flag.Duration("timeout", 10*time.Minute, "wait timeout")
	interval := flag.Duration("interval", 5*time.Second, "wait poll interval (kustomize-controller: 5s)")
	flag.Parse()
	out := json.NewEncoder(os.Stdout)
	res := result{Actions: map[string]int{}}
	start := time.Now()

	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fail(err)
	}
	cfg.QPS, cfg.Burst = 50, 300
	meter := &meter{}
	clientmetrics.RateLimiterLatency = meter
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return counting{meter: meter, next: rt} }
	kube, err := client.New(cfg, client.Options{})
	if err != nil {
		fail(err)
	}
	poller := polling.NewStatusPoller(kube, kube.RESTMapper(), polling.Options{})
	manager := ssa.NewResourceManager(kube, poller, ssa.Owner{Field: "bench-flux", Group: "bench.gitsync.local"})
	manager.SetConcurrency(4)

	objects, err := readDir(*dir)
	if err != nil {
		fail(err)
	}
	res.Objects = len(objects)
	res.ReadS = time.Since(start).Seconds()

	ctx := context.Background()
	applyStart := time.Now()
	opts := ssa.DefaultApplyOptions()
	res.Apply = meter.start()
	changeSet, err := manager.ApplyAllStaged(ctx, objects, opts)
	res.ApplyS = time.Since(applyStart).Seconds()
	if err != nil {
		res.ApplyErr = truncate(err.Error(), 2000)
		res.TotalS = time.Since(start).Seconds()
		_ = out.Encode(res)
		os.Exit(1)
	}
	for _, entry := range changeSet.Entries {
		res.Actions[string(entry.Action)]++
	}
	waitStart := time.Now()
	res.Wait = meter.start()
	err = manager.WaitForSet(changeSet.ToObjMetadataSet(), ssa.WaitOptions{Interval: *interval, Timeout: *timeout, FailFast: true})
	res.WaitS = time.Since(waitStart).Seconds()
	res.TotalS = time.Since(start).Seconds()
	if err != nil {
		res.WaitErr = truncate(err.Error(), 2000)
		_ = out.Encode(res)
		os.Exit(1)
	}
	_ = out.Encode(res)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "fluxssa:", err)
	os.Exit(2)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
