package rendezvous

import (
	"slices"
	"testing"
)

func TestTheFIFOTakesTheOldestLiveEntryItWants(t *testing.T) {
	const dead, skipped = -1, 100
	for _, tc := range []struct {
		name     string
		queue    []int
		want     int
		wantOK   bool
		wantLeft []int
	}{
		{"the oldest entry", []int{1, 2, 3}, 1, true, []int{2, 3}},
		{"dead entries before it are dropped", []int{dead, dead, 2, 3}, 2, true, []int{3}},
		{"skipped entries stay, in order", []int{skipped, dead, 2, 3}, 2, true, []int{skipped, 3}},
		{"the last entry", []int{skipped, skipped + 1, 2}, 2, true, []int{skipped, skipped + 1}},
		{"nothing it wants", []int{skipped, dead, skipped + 1}, 0, false, []int{skipped, skipped + 1}},
		{"only dead entries", []int{dead, dead}, 0, false, nil},
		{"an empty queue", nil, 0, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFIFO[int]()
			for _, v := range tc.queue {
				f.push("k", v)
			}
			f.push("other", 7)
			got, ok := f.popWhere("k", func(v int) bool { return v != dead }, func(v int) bool { return v < skipped })
			if got != tc.want || ok != tc.wantOK {
				t.Fatalf("popWhere = %d, %v, want %d, %v", got, ok, tc.want, tc.wantOK)
			}
			if left := f.queues["k"]; !slices.Equal(left, tc.wantLeft) {
				t.Fatalf("left %v, want %v", left, tc.wantLeft)
			}
			if _, ok := f.queues["k"]; ok == (len(tc.wantLeft) == 0) {
				t.Fatalf("key kept = %v with %d entries left: want it only while it has entries", ok, len(tc.wantLeft))
			}
			if f.len() != len(tc.wantLeft)+1 {
				t.Fatalf("len = %d, want %d", f.len(), len(tc.wantLeft)+1)
			}
		})
	}
}

func TestTheFIFOPushesFrontAndRemoves(t *testing.T) {
	f := newFIFO[int]()
	f.push("k", 2)
	f.push("k", 3)
	f.pushFront("k", 1)
	if !f.remove("k", 2) || f.remove("k", 2) || f.remove("none", 1) {
		t.Fatal("remove reports wrongly whether the entry was there")
	}
	var all []int
	f.each(func(v int) { all = append(all, v) })
	if !slices.Equal(all, []int{1, 3}) || f.len() != 2 {
		t.Fatalf("entries = %v (len %d), want [1 3]", all, f.len())
	}
	for _, want := range []int{1, 3} {
		if got, ok := f.pop("k", func(int) bool { return true }); !ok || got != want {
			t.Fatalf("pop = %d, %v, want %d", got, ok, want)
		}
	}
	if _, ok := f.queues["k"]; ok || f.len() != 0 {
		t.Fatal("an emptied key is kept")
	}
}
