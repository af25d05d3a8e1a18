package etcdtest

import (
	"context"
	"testing"
	"time"
)

// TestRestartKeepsData writes a key, restarts the server and reads it back.
func TestRestartKeepsData(t *testing.T) {
	s := Start(t)
	c := s.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	s.Stop()
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err := c.Get(short, "k")
	cancelShort()
	if err == nil {
		t.Fatal("get with etcd stopped: no error")
	}
	s.Restart()
	r, err := c.Get(ctx, "k")
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v, want k=v", r.Kvs)
	}
}
