package main

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	config_util "github.com/prometheus/common/config"
	"golang.org/x/crypto/bcrypt"
)

func TestPasswordChecksAreCached(t *testing.T) {
	sp := startSecProxy(t, false, secWebConfig(t, secPasswords))
	get := func(password string) int {
		resp, err := sp.request(t, context.Background(), secCreds{user: "prometheus", password: password}, http.MethodGet, "/clients", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := 0; i < 5; i++ {
		if code := get("scrape-secret"); code != http.StatusOK {
			t.Fatalf("request %d answered %d", i, code)
		}
	}
	if runs := sp.sec.bcryptRuns.Load(); runs != 1 {
		t.Errorf("bcrypt ran %d times for 5 logins, want 1", runs)
	}
	// Failures are remembered too: a stale password retried costs one
	// comparison.
	for i := 0; i < 2; i++ {
		if code := get("wrong"); code != http.StatusUnauthorized {
			t.Fatalf("wrong password answered %d", code)
		}
	}
	if runs := sp.sec.bcryptRuns.Load(); runs != 2 {
		t.Errorf("bcrypt ran %d times, want 2", runs)
	}
}

func TestWrongPasswordsAtOnceDoNotDelayACorrectLogin(t *testing.T) {
	// A cost high enough that a comparison takes milliseconds, as users' do.
	const bcryptTestCost = 8
	hash, err := bcrypt.GenerateFromPassword([]byte("right"), bcryptTestCost)
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]config_util.Secret{"prometheus": config_util.Secret(hash)}
	basic := func(password string) string {
		req := &http.Request{Header: http.Header{}}
		req.SetBasicAuth("prometheus", password)
		return req.Header.Get("Authorization")
	}
	s, err := newSecurity(defaultConfig(), log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, ok := s.checkPassword(users, basic("calibrate")); ok {
		t.Fatal("wrong password accepted")
	}
	one := time.Since(start)

	const wrong = 50
	var wg sync.WaitGroup
	release := make(chan struct{})
	for i := 0; i < wrong; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-release
			if _, ok := s.checkPassword(users, basic("stale")); ok {
				t.Error("wrong password accepted")
			}
		}()
	}
	close(release)
	start = time.Now()
	user, ok := s.checkPassword(users, basic("right"))
	took := time.Since(start)
	wg.Wait()
	if !ok || user != "prometheus" {
		t.Fatalf("correct password refused")
	}
	// One comparison takes `one`; behind 50 serialised ones the login took
	// 50 times that.
	if took > 10*one {
		t.Errorf("correct login took %s among %d wrong ones, one comparison takes %s", took, wrong, one)
	}
	if runs := s.bcryptRuns.Load(); runs > 3 {
		t.Errorf("bcrypt ran %d times for 3 distinct credentials", runs)
	}
}
