package rendezvous

// fifo is a first-in, first-out queue per key that keeps no state for keys
// without entries. It is not safe for concurrent use; the Hub guards it.
type fifo[T comparable] struct {
	queues map[string][]T
	n      int
}

func newFIFO[T comparable]() fifo[T] {
	return fifo[T]{queues: map[string][]T{}}
}

// push appends v to the queue of key.
func (f *fifo[T]) push(key string, v T) {
	f.queues[key] = append(f.queues[key], v)
	f.n++
}

// pushFront puts v at the head of the queue of key.
func (f *fifo[T]) pushFront(key string, v T) {
	f.queues[key] = append([]T{v}, f.queues[key]...)
	f.n++
}

// pop removes and returns the oldest entry of key for which live holds,
// dropping the dead ones before it.
func (f *fifo[T]) pop(key string, live func(T) bool) (T, bool) {
	return f.popWhere(key, live, func(T) bool { return true })
}

// popWhere removes and returns the oldest live entry of key for which want
// holds, dropping the dead ones before it. Live entries that want skips
// stay queued, in order: they are not this taker's, but may be another's.
func (f *fifo[T]) popWhere(key string, live, want func(T) bool) (T, bool) {
	queue := f.queues[key]
	for i := 0; i < len(queue); {
		v := queue[i]
		switch {
		case !live(v):
			queue = f.cut(queue, i)
		case want(v):
			f.set(key, f.cut(queue, i))
			return v, true
		default:
			i++
		}
	}
	f.set(key, queue)
	var zero T
	return zero, false
}

// cut removes the i-th entry of queue, clearing the slot it leaves so that
// the backing array holds no stale entry.
func (f *fifo[T]) cut(queue []T, i int) []T {
	f.n--
	var zero T
	if i == 0 {
		queue[0] = zero
		return queue[1:]
	}
	copy(queue[i:], queue[i+1:])
	queue[len(queue)-1] = zero
	return queue[:len(queue)-1]
}

// remove deletes v from the queue of key and reports whether it was there.
func (f *fifo[T]) remove(key string, v T) bool {
	queue := f.queues[key]
	for i, q := range queue {
		if q == v {
			f.set(key, append(queue[:i:i], queue[i+1:]...))
			f.n--
			return true
		}
	}
	return false
}

// len returns the number of entries of all keys.
func (f *fifo[T]) len() int { return f.n }

// each calls fn for every entry of every key.
func (f *fifo[T]) each(fn func(T)) {
	for _, queue := range f.queues {
		for _, v := range queue {
			fn(v)
		}
	}
}

func (f *fifo[T]) set(key string, queue []T) {
	if len(queue) == 0 {
		delete(f.queues, key)
		return
	}
	f.queues[key] = queue
}
