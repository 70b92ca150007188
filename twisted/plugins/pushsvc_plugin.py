from twisted.application.service import ServiceMaker

pushsvc = ServiceMaker(
    "pushsvc", "pushsvc.tap", "Real-time push service (Pusher protocol v7) and chat", "pushsvc"
)
