package util

import (
	"net"
	"time"
)

// KeepAlive makes a silently dead peer (a crashed host, a dropped NAT entry)
// noticed within about 45 seconds: probes start after 30 s of silence and
// the connection is closed after 3 unanswered probes 5 s apart.
var KeepAlive = net.KeepAliveConfig{
	Enable:   true,
	Idle:     30 * time.Second,
	Interval: 5 * time.Second,
	Count:    3,
}
