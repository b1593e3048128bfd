"""gRPC servicer of ``histoedge.monitoring.MonitoringService`` (feedback): protobuf <-> Monitoring.

Errors become status codes through the inference servicer's one table.
"""

from __future__ import annotations

from histoedge.serving._proto import monitoring_pb2 as pb
from histoedge.serving._proto import monitoring_pb2_grpc as pb_grpc
from histoedge.serving.monitoring.monitor import Monitoring
from histoedge.serving.servicer import _rpc

SERVICE_NAME = "histoedge.monitoring.MonitoringService"


class MonitoringServicer(pb_grpc.MonitoringServiceServicer):
    def __init__(self, monitoring: Monitoring) -> None:
        self.monitoring = monitoring

    @_rpc
    def Feedback(self, request, context):
        result = self.monitoring.feedback(request.id, int(request.index), request.label)
        return pb.FeedbackResponse(model_name=result.model, model_version=str(result.version),
                                   predicted_label=result.predicted, correct=result.correct,
                                   labels=result.labels)
