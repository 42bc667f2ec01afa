// Command fluxssa applies a directory of YAML with Flux's server-side apply engine
// (github.com/fluxcd/pkg/ssa) the way kustomize-controller does: ApplyAllStaged, then
// WaitForSet over the whole change set, concurrency 4, client QPS 50 / burst 300.
// It prints its timings as one JSON object on stdout; the bench compares them with gitsync.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/pkg/ssa"
	ssautil "github.com/fluxcd/pkg/ssa/utils"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

type result struct {
	Objects  int            `json:"objects"`
	ReadS    float64        `json:"read_s"`
	ApplyS   float64        `json:"apply_s"`
	WaitS    float64        `json:"wait_s"`
	TotalS   float64        `json:"total_s"`
	Actions  map[string]int `json:"actions"`
	WaitErr  string         `json:"wait_error,omitempty"`
	ApplyErr string         `json:"apply_error,omitempty"`
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
	changeSet, err := manager.ApplyAllStaged(ctx, objects, opts)
	res.ApplyS = time.Since(applyStart).Seconds()
	if err != nil {
		res.ApplyErr = err.Error()
		res.TotalS = time.Since(start).Seconds()
		_ = out.Encode(res)
		os.Exit(1)
	}
	for _, entry := range changeSet.Entries {
		res.Actions[string(entry.Action)]++
	}
	waitStart := time.Now()
	err = manager.WaitForSet(changeSet.ToObjMetadataSet(), ssa.WaitOptions{Interval: *interval, Timeout: *timeout, FailFast: true})
	res.WaitS = time.Since(waitStart).Seconds()
	res.TotalS = time.Since(start).Seconds()
	if err != nil {
		res.WaitErr = err.Error()
		_ = out.Encode(res)
		os.Exit(1)
	}
	_ = out.Encode(res)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "fluxssa:", err)
	os.Exit(2)
}
