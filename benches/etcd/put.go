// Puts per second against a 3-member etcd on loopback, the counterpart of Titan's submit bench
// (`cargo bench --bench submit -- --location dc2:10,dc3:5 --target leader`): for each concurrency, that many clients,
// sharing one gRPC connection to the leader (the default of etcd's own benchmark tool, and here its fastest), put 256-byte values back to back with etcd's own Go client, and one line
// per level gives the rate and the p50 and p99 latency. Built and run by scripts/bench-etcd.
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
)

// requests is the number of puts at a concurrency: the same as Titan's submit bench sends.
func requests(clients int) int {
	n := clients * 120
	if n < 3000 {
		n = 3000
	}
	if n > 30000 {
		n = 30000
	}
	return n - n%clients
}

// maxConns caps the gRPC connections a level opens; clients beyond it share them (HTTP/2 streams).
// BENCH_ETCD_CONNS changes it: with 256 clients here, 1 or 4 connections put 8,500-9,300/s, 16 put 8,100/s and
// 100 put 6,600/s.
var maxConns = 1

func dial(endpoint string) *clientv3.Client {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		fail("connecting to %s: %v", endpoint, err)
	}
	return c
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "bench-etcd: "+format+"\n", args...)
	os.Exit(1)
}

// leader is the endpoint of the member that leads.
func leader(endpoints []string) string {
	for _, ep := range endpoints {
		c := dial(ep)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		status, err := c.Status(ctx, ep)
		cancel()
		c.Close()
		if err == nil && status.Leader == status.Header.MemberId {
			return ep
		}
	}
	fail("no member of %v leads", endpoints)
	return ""
}

func level(endpoint string, clients int) {
	value := strings.Repeat("x", 256)
	n := clients
	if n > maxConns {
		n = maxConns
	}
	conns := make([]*clientv3.Client, n)
	for i := range conns {
		conns[i] = dial(endpoint)
		if _, err := conns[i].Put(context.Background(), "warm-up", value); err != nil {
			fail("warm-up put: %v", err)
		}
	}
	per := requests(clients) / clients
	latencies := make([][]time.Duration, clients)
	errors := make([]int, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < per; j++ {
				t := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := conns[i%len(conns)].Put(ctx, fmt.Sprintf("bench/%d/%d", i, j), value)
				cancel()
				if err != nil {
					errors[i]++
					continue
				}
				latencies[i] = append(latencies[i], time.Since(t))
			}
		}(i)
	}
	wg.Wait()
	wall := time.Since(start)
	var all []time.Duration
	failed := 0
	for i := range latencies {
		all = append(all, latencies[i]...)
		failed += errors[i]
	}
	for _, c := range conns {
		c.Close()
	}
	if len(all) == 0 {
		fail("every put failed")
	}
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	ms := func(q float64) float64 { return float64(all[int(float64(len(all)-1)*q)]) / 1e6 }
	fmt.Printf("etcd clients=%d conns=%d target=leader put=256B done=%d errors=%d rate_per_s=%.0f p50_ms=%.2f p99_ms=%.2f wall_s=%.2f\n",
		clients, len(conns), len(all), failed, float64(len(all))/wall.Seconds(), ms(0.5), ms(0.99), wall.Seconds())
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: put ENDPOINT,ENDPOINT,... [CLIENTS...]")
	}
	endpoints := strings.Split(os.Args[1], ",")
	if v := os.Getenv("BENCH_ETCD_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fail("BENCH_ETCD_CONNS=%q is not a number of connections", v)
		}
		maxConns = n
	}
	levels := []int{1, 16, 64, 256}
	if len(os.Args) > 2 {
		levels = nil
		for _, a := range os.Args[2:] {
			n, err := strconv.Atoi(a)
			if err != nil || n < 1 {
				fail("%q is not a number of clients", a)
			}
			levels = append(levels, n)
		}
	}
	for _, clients := range levels {
		level(leader(endpoints), clients)
	}
}
